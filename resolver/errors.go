package resolver

import "errors"

var (
	// ErrNotFound: the image, layout entry or blob does not exist.
	ErrNotFound = errors.New("not found")
	// ErrBadResponse: the registry answered something other than what was
	// asked (wrong Content-Range, wrong length, wrong digest, short body).
	ErrBadResponse = errors.New("bad registry response")
	// ErrShortBody: a response body ended before the promised length; it is
	// always wrapped together with ErrBadResponse and is retried.
	ErrShortBody = errors.New("short body")
	// ErrCorrupt: a local blob does not match its descriptor (size, digest).
	ErrCorrupt = errors.New("corrupt blob")
	// ErrDigest: blob content does not match its digest.
	ErrDigest = errors.New("digest mismatch")
	// ErrInvalidRef: the reference cannot be parsed.
	ErrInvalidRef = errors.New("invalid reference")
)
