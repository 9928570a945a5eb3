// Package registry runs a real container registry process for integration
// tests and benchmarks: Debian's docker-registry (distribution v2.8),
// listening on 127.0.0.1 with filesystem storage under a directory the
// caller owns.
//
// Model: one Registry is one config file, one storage directory and one
// log file in Dir, and at most one running process at a time. Addr and URL
// never change across Stop and Restart, so references built before a
// restart stay valid and the stored content survives it.
//
// Invariants: a Registry returned without error answers GET /v2/ with 200;
// Stop and Close are idempotent and return only after the process has been
// reaped; the process inherits no REGISTRY_* variables from the
// environment, so the config file is the whole configuration.
//
// Start and Skopeo are the testing.TB forms. When the binary they need is
// missing they skip the test, unless CI=true, where they fail it: a CI
// machine without the tools must not report green.
package registry
