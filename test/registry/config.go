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

// writeConfig writes the config for storage dir root and listen address
// addr to path. %q output of ordinary paths is a valid YAML double-quoted
// scalar.
func writeConfig(path, root, addr string) error {
	data := fmt.Sprintf(configYAML, root, addr)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		return fmt.Errorf("registry: write config: %w", err)
	}
	return nil
}
