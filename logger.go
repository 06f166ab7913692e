package txlock

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// WithLogger logs what an operator of Run wants to know, through logger
// (slog.Default() at the time of each line when nil):
//
//   - Debug: an attempt retried after a conflict (serialization failure,
//     deadlock, unique violation), with its reason and SQLSTATE;
//   - Warn: a lease lost; a lock service carried on without or still
//     unreachable; a database connection lost before COMMIT; a COMMIT whose
//     outcome was unknown and was then found committed or aborted; a lock
//     that could not be released; a Run that ran out of attempts;
//   - Error: a COMMIT whose outcome could not be found out
//     (ErrAmbiguousCommit).
//
// Lines at Warn and Error carry the same message at most once a second;
// the next one says how many were left out. Key values are never logged:
// they can be personal data. The context of each line is the attempt's, so
// a handler that reads trace ids from it finds them.
func WithLogger(logger *slog.Logger) Option {
	l := &runLogger{log: logger, last: map[string]time.Time{}, dropped: map[string]int{}}
	return WithObserver(Observer{AttemptDone: l.attemptDone, RunDone: l.runDone})
}

// runLogger is WithLogger's observer, shared by every Run given the
// Option.
type runLogger struct {
	log *slog.Logger

	mu      sync.Mutex
	last    map[string]time.Time // when each message was last logged
	dropped map[string]int       // lines left out since
}

// logEvery rate-limits Warn and Error lines, per message.
const logEvery = time.Second

func (l *runLogger) attemptDone(ctx context.Context, _ RunInfo, ev Event) {
	base := []slog.Attr{slog.Int("attempt", ev.Attempt)}
	if ev.SQLState != "" {
		base = append(base, slog.String("sqlstate", ev.SQLState))
	}
	switch {
	case ev.Commit == CommitUnknown:
		l.emit(ctx, slog.LevelError, "txlock: commit outcome unknown", base, ev.Err)
	case ev.Commit == CommitFoundCommitted:
		l.emit(ctx, slog.LevelWarn, "txlock: commit failed in flight; looked up: committed", base, ev.Err)
	case ev.Commit == CommitFoundAborted:
		l.emit(ctx, slog.LevelWarn, "txlock: commit failed in flight; looked up: aborted, retrying", base, ev.Err)
	case ev.Reason == "lock_lost" || ev.LeaseLost != nil:
		l.emit(ctx, slog.LevelWarn, "txlock: lease lost", base, firstErr(ev.LeaseLost, ev.Err))
	case ev.Reason == "lock_unavailable" || errors.Is(ev.Err, ErrLockUnavailable):
		l.emit(ctx, slog.LevelWarn, "txlock: lock service unavailable", base, ev.Err)
	case ev.Reason == "connection_lost":
		l.emit(ctx, slog.LevelWarn, "txlock: database connection lost before commit, retrying", base, ev.Err)
	case ev.Retry:
		l.emit(ctx, slog.LevelDebug, "txlock: retrying after a conflict", append(base, slog.String("reason", ev.Reason)), ev.Err)
	}
	if ev.Degraded != nil {
		l.emit(ctx, slog.LevelWarn, "txlock: carrying on without a lock service", base, ev.Degraded)
	}
	if ev.ReleaseErr != nil {
		l.emit(ctx, slog.LevelWarn, "txlock: lock not released (it expires with its lease)", base, ev.ReleaseErr)
	}
}

func (l *runLogger) runDone(ctx context.Context, _ RunInfo, res RunResult) {
	if errors.Is(res.Err, ErrTooManyAttempts) {
		l.emit(ctx, slog.LevelWarn, "txlock: too many attempts", []slog.Attr{slog.Int("attempts", res.Attempts)}, res.Err)
	}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// emit logs msg at level, unless a line with the same message at Warn or
// above was logged less than logEvery ago.
func (l *runLogger) emit(ctx context.Context, level slog.Level, msg string, attrs []slog.Attr, err error) {
	log := l.log
	if log == nil {
		log = slog.Default()
	}
	if !log.Enabled(ctx, level) {
		return
	}
	if level >= slog.LevelWarn {
		l.mu.Lock()
		now := time.Now()
		if now.Sub(l.last[msg]) < logEvery {
			l.dropped[msg]++
			l.mu.Unlock()
			return
		}
		if n := l.dropped[msg]; n > 0 {
			attrs = append(attrs, slog.Int("suppressed", n))
		}
		l.last[msg], l.dropped[msg] = now, 0
		l.mu.Unlock()
	}
	if err != nil {
		attrs = append(attrs, slog.Any("err", err))
	}
	log.LogAttrs(ctx, level, msg, attrs...)
}
