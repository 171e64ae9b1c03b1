package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// MinServerVersion is the oldest nats-server release the registry supports: 2.9 brought
// the direct gets (allow_direct) that routers read with.
const MinServerVersion = "2.9.0"

// ErrUnsupportedServer reports a nats-server older than MinServerVersion.
var ErrUnsupportedServer = errors.New("nats-server version not supported")

// ErrNoJetStream reports a NATS server (or account) without JetStream.
var ErrNoJetStream = errors.New("JetStream not enabled")

// JetStream error codes that mean "no JetStream here" (not "JetStream busy").
const (
	jsNotEnabled           = 10076 // JetStream not enabled on the server
	jsNotEnabledForAccount = 10039 // JetStream not enabled for the account
)

// CheckServerVersion returns nil when version (as a server reports it in INFO: "2.9.10",
// "v2.11.0-RC.1") is MinServerVersion or newer, and an error wrapping ErrUnsupportedServer
// naming both versions otherwise. A pre-release ranks below its release.
func CheckServerVersion(version string) error {
	got, err := ParseServerVersion(version)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupportedServer, err)
	}
	oldest, _ := ParseServerVersion(MinServerVersion)
	if compareVersions(got, oldest) < 0 {
		return fmt.Errorf("%w: nats-server %s is older than %s, the oldest release the registry supports", ErrUnsupportedServer,
			strings.TrimPrefix(version, "v"), MinServerVersion)
	}
	return nil
}

// ServerVersion is a parsed nats-server version.
type ServerVersion struct {
	Major, Minor, Patch int
	Pre                 string // pre-release ("RC.1"), empty for a release
}

// ParseServerVersion parses "major.minor.patch[-pre]" with an optional leading v.
func ParseServerVersion(s string) (ServerVersion, error) {
	var v ServerVersion
	core, pre, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(s), "v"), "-")
	core, _, _ = strings.Cut(core, "+") // build metadata
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return v, fmt.Errorf("nats-server version %q is not major.minor.patch", s)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return v, fmt.Errorf("nats-server version %q is not major.minor.patch", s)
		}
		nums[i] = n
	}
	return ServerVersion{Major: nums[0], Minor: nums[1], Patch: nums[2], Pre: pre}, nil
}

func compareVersions(a, b ServerVersion) int {
	for _, d := range [...]int{a.Major - b.Major, a.Minor - b.Minor, a.Patch - b.Patch} {
		if d != 0 {
			return d
		}
	}
	switch {
	case a.Pre == b.Pre:
		return 0
	case a.Pre == "":
		return 1
	case b.Pre == "":
		return -1
	}
	return strings.Compare(a.Pre, b.Pre)
}

// CheckServer verifies the server nc is connected to: its version (from the INFO it sent
// at connect) must be at least MinServerVersion (else an error wrapping
// ErrUnsupportedServer), and JetStream must be enabled for the account (else an error
// wrapping ErrNoJetStream). Other failures (a timeout, a JetStream cluster without a
// leader) are returned as they are: they may pass.
func CheckServer(ctx context.Context, nc *nats.Conn) error {
	if !nc.IsConnected() {
		return fmt.Errorf("check NATS server: connection is %s", nc.Status())
	}
	url, version := nc.ConnectedUrlRedacted(), nc.ConnectedServerVersion()
	if err := CheckServerVersion(version); err != nil {
		return fmt.Errorf("NATS server at %s: %w", url, err)
	}
	m, err := nc.RequestWithContext(ctx, "$JS.API.INFO", nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("NATS server at %s (nats-server %s): %w: nothing answers $JS.API.INFO (start the server with -js, or a jetstream {} block in its configuration)",
			url, version, ErrNoJetStream)
	}
	if err != nil {
		return fmt.Errorf("NATS server at %s (nats-server %s): JetStream account info: %w", url, version, err)
	}
	var reply struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return fmt.Errorf("NATS server at %s (nats-server %s): JetStream account info: %w", url, version, err)
	}
	if e := reply.Error; e != nil {
		if e.ErrCode == jsNotEnabled || e.ErrCode == jsNotEnabledForAccount {
			return fmt.Errorf("NATS server at %s (nats-server %s): %w: %s", url, version, ErrNoJetStream, e.Description)
		}
		return fmt.Errorf("NATS server at %s (nats-server %s): JetStream account info: %d %s", url, version, e.ErrCode, e.Description)
	}
	return nil
}
