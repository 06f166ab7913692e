// Package neterr tells errors that mean a network connection broke from
// the rest, for every package of the module that talks to a server.
package neterr

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// Broken reports whether err means the connection a call used is gone: the
// peer closed it or reset it, or it was already closed. A call that failed
// this way on a pooled connection is worth repeating once on a new one.
func Broken(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED)
}

// Unreachable reports whether err means the server could not be reached
// or answered: a broken connection, a refused or timed-out dial, or any
// other net.Error.
func Unreachable(err error) bool {
	if Broken(err) || errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}
