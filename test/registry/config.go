package registry

import (
	"fmt"
	"os"
)

// configYAML is the registry configuration: filesystem storage, deletes
// enabled (tests remove manifests and blobs), upload purging off (it would
// delete half-finished uploads of slow tests), and the text log formatter
// because the log is read by people when a test fails.
const configYAML = `version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  headers:
    X-Content-Type-Options: [nosniff]
`

// authYAML turns on htpasswd (HTTP Basic) authentication.
const authYAML = `auth:
  htpasswd:
    realm: cargohold-test
    path: %q
`

// AuthUser and AuthPassword are the one account of a registry started with
// StartProcessAuth. authHash is AuthPassword's bcrypt hash (distribution
// accepts bcrypt only; the standard library has none, so it is fixed here).
const (
	AuthUser     = "cargohold"
	AuthPassword = "cargohold-test-pw"
	authHash     = "$2b$05$Cz/5o683auwtmlcA7tvDeuCWv9G5GDmEFMjj8XcfMijVcE/2FEjy2"
)

// writeConfig writes the config for storage dir root and listen address
// addr (and htpasswd authentication with that file, when not "") to path. %q output of ordinary paths is a valid YAML double-quoted
// scalar.
func writeConfig(path, root, addr, htpasswd string) error {
	data := fmt.Sprintf(configYAML, root, addr)
	if htpasswd != "" {
		data += fmt.Sprintf(authYAML, htpasswd)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		return fmt.Errorf("registry: write config: %w", err)
	}
	return nil
}
