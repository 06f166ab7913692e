package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/txlock/txlock"
)

// Limits on what a client may ask for.
const (
	// MaxBodyBytes bounds a request body; a longer one is a 400.
	MaxBodyBytes = 4 << 10
	// DefaultTTL is how long a reservation lasts when the request gives
	// no ttl.
	DefaultTTL = time.Hour
	// MinTTL and MaxTTL bound the ttl a request may give.
	MinTTL = time.Second
	MaxTTL = 30 * 24 * time.Hour
	// DefaultOwner is stored when the request names no owner.
	DefaultOwner = "anonymous"
	// MaxOwnerLen bounds the owner, in bytes.
	MaxOwnerLen = 128
)

// ErrNameTaken is what the reservation body returns when the name already
// has an active reservation; the handler turns it into a 409.
var ErrNameTaken = errors.New("name is taken")

// Server is the name-reservation service.
type Server struct {
	// DB is the database, with the schema of migrations.Up.
	DB *sql.DB
	// RunOptions are passed to every txlock.Run: the lockers, the
	// isolation level, an observer.
	RunOptions []txlock.Option
	// Now is the clock; nil means time.Now. Tests replace it.
	Now func() time.Time
	// Log receives errors the client only sees as a 500; nil means
	// slog.Default().
	Log *slog.Logger

	// Naive turns off the fix: check, then insert, with no transaction
	// and no lock, as hand-written code often does. Only the
	// race demo sets it, to show the bug.
	Naive bool
	// NaiveGap is slept between the check and the insert in naive mode.
	// It stands for the work a real handler does there (validation, a
	// call to another service, a GC pause); it widens the window the bug
	// lives in so that the demo shows it on every run instead of once in
	// a while.
	NaiveGap time.Duration
}

// Handler returns the service's routes:
//
//	POST /names         {"name": "Ann", "ttl": "1h", "owner": "..."} → 201, 400, 409
//	GET  /names/{name}  → 200 with the active reservation, or 404
//
// Any other method on these paths is a 405, from http.ServeMux.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /names", s.reserve)
	mux.HandleFunc("GET /names/{name}", s.lookup)
	return mux
}

// reserveRequest is the body of POST /names.
type reserveRequest struct {
	Name  string `json:"name"`
	TTL   string `json:"ttl"`
	Owner string `json:"owner"`
}

// errorBody is the body of every response that is not a success.
type errorBody struct {
	Error string `json:"error"`
}

func (s *Server) reserve(w http.ResponseWriter, r *http.Request) {
	res, err := s.parseReserve(w, r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	if s.Naive {
		res, err = s.reserveNaive(r.Context(), res)
	} else {
		res, err = s.Reserve(r.Context(), res)
	}
	switch {
	case err == nil:
		writeJSON(w, http.StatusCreated, res)
	case errors.Is(err, ErrNameTaken):
		writeJSON(w, http.StatusConflict, errorBody{fmt.Sprintf("name %q is taken", res.Name)})
	case errors.Is(err, txlock.ErrLockBusy), errors.Is(err, txlock.ErrLockUnavailable),
		errors.Is(err, txlock.ErrTooManyAttempts):
		w.Header().Set("Retry-After", "1")
		s.fail(w, r, http.StatusServiceUnavailable, "busy, try again", err)
	case errors.Is(err, txlock.ErrAmbiguousCommit):
		s.fail(w, r, http.StatusInternalServerError,
			"the reservation may or may not have been stored; look it up before trying again", err)
	default:
		s.fail(w, r, http.StatusInternalServerError, "internal error", err)
	}
}

// parseReserve reads and checks a POST /names body and returns the
// reservation it asks for, times set from the clock.
func (s *Server) parseReserve(w http.ResponseWriter, r *http.Request) (Reservation, error) {
	var req reserveRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return Reservation{}, fmt.Errorf("request body larger than %d bytes", tooBig.Limit)
		}
		return Reservation{}, fmt.Errorf("bad JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Reservation{}, errors.New("bad JSON: more than one value in the body")
	}
	name, err := NormalizeName(req.Name)
	if err != nil {
		return Reservation{}, err
	}
	ttl := DefaultTTL
	if req.TTL != "" {
		ttl, err = time.ParseDuration(req.TTL)
		if err != nil {
			return Reservation{}, fmt.Errorf("bad ttl: %w", err)
		}
		if ttl < MinTTL || ttl > MaxTTL {
			return Reservation{}, fmt.Errorf("bad ttl %q: want between %v and %v", req.TTL, MinTTL, MaxTTL)
		}
	}
	owner := req.Owner
	if owner == "" {
		owner = DefaultOwner
	}
	if len(owner) > MaxOwnerLen {
		return Reservation{}, fmt.Errorf("owner longer than %d bytes", MaxOwnerLen)
	}
	// Both databases keep microseconds; so does the answer.
	now := s.now().UTC().Truncate(time.Microsecond)
	return Reservation{Name: name, Owner: owner, CreatedAt: now, ExpiresAt: now.Add(ttl)}, nil
}

// Reserve stores res if its name has no active reservation, and returns it
// with its ID; it returns an error wrapping ErrNameTaken if the name is
// taken. This is the drop-in: the repository calls, unchanged, inside
// txlock.Run with the name as the lock key.
func (s *Server) Reserve(ctx context.Context, res Reservation) (Reservation, error) {
	ttl := res.ExpiresAt.Sub(res.CreatedAt)
	// A request may not outlive what its client waits for: a reservation
	// committed after the answer was given up would be acknowledged to
	// nobody.
	ctx, cancel := context.WithTimeout(ctx, reserveTimeout)
	defer cancel()
	err := txlock.Run(ctx, s.DB, []string{"name:" + res.Name}, func(ctx context.Context, tx *sql.Tx) error {
		// "Now" is taken on every attempt, after the lock: a lock wait
		// or a retry must not leave the reservation starting in the
		// past, or even already expired.
		now := s.now().UTC().Truncate(time.Microsecond)
		res.CreatedAt, res.ExpiresAt = now, now.Add(ttl)
		taken, err := NameActive(ctx, tx, res.Name, res.CreatedAt)
		if err != nil {
			return err
		}
		if taken {
			return ErrNameTaken
		}
		res.ID, err = InsertName(ctx, tx, res)
		return err
	}, s.RunOptions...)
	if err != nil {
		return res, fmt.Errorf("reserve %q: %w", res.Name, err)
	}
	return res, nil
}

// reserveNaive is the code without a lock: check, then insert, on
// whatever connections the pool hands out, with nothing in between to stop
// a second request doing the same.
func (s *Server) reserveNaive(ctx context.Context, res Reservation) (Reservation, error) {
	taken, err := NameActive(ctx, s.DB, res.Name, res.CreatedAt)
	if err != nil {
		return res, err
	}
	if taken {
		return res, ErrNameTaken
	}
	if s.NaiveGap > 0 {
		select {
		case <-time.After(s.NaiveGap):
		case <-ctx.Done():
			return res, context.Cause(ctx)
		}
	}
	res.ID, err = InsertName(ctx, s.DB, res)
	return res, err
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request) {
	name, err := NormalizeName(r.PathValue("name"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	res, err := ActiveReservation(r.Context(), s.DB, name, s.now())
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, res)
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("name %q is free", name)})
	default:
		s.fail(w, r, http.StatusInternalServerError, "internal error", err)
	}
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// fail logs err and answers with status and a message that does not leak
// it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, msg string, err error) {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path,
		"status", status, "err", err)
	writeJSON(w, status, errorBody{msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
