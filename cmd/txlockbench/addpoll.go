package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
)

// addPollLocker is the common hand-written memcached lock, reproduced
// faithfully for comparison: memcached add with a 30 s lifetime, a retry
// every 50 ms while it is taken, and a plain delete to release, whoever
// holds the key by then. Do not use it: it is here to be measured against.
type addPollLocker struct{ mc *memcache.Client }

func (*addPollLocker) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.BeforeBegin}
}

func (s *addPollLocker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	var held []string
	for _, k := range req.Keys {
		sum := sha256.Sum256([]byte(k))
		key := "addpoll::" + hex.EncodeToString(sum[:])
		for {
			err := s.mc.Add(&memcache.Item{Key: key, Value: []byte("1"), Expiration: 30})
			if err == nil {
				held = append(held, key)
				break
			}
			if !errors.Is(err, memcache.ErrNotStored) || req.TryOnce {
				s.release(held)
				if req.TryOnce {
					return nil, txlock.ErrLockBusy
				}
				return nil, err
			}
			select {
			case <-ctx.Done():
				s.release(held)
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return addPollLease{s: s, keys: held}, nil
}

func (s *addPollLocker) release(keys []string) {
	for _, k := range keys {
		_ = s.mc.Delete(k)
	}
}

type addPollLease struct {
	s    *addPollLocker
	keys []string
}

func (addPollLease) Verify(context.Context) error { return nil }

func (l addPollLease) Release(context.Context) error {
	l.s.release(l.keys)
	return nil
}
