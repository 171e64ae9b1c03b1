package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// root is the repository root (the tests run in deploy/).
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root not found above deploy/: %v", err)
	}
	return dir
}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// envPrefix is the prefix of every variable of the syncer (cmd/syncer/config.go).
const envPrefix = "EXTENSION_REGISTRY_"

// notYetInConfig are variables the kit sets ahead of the code of this branch, each with
// where it comes from. The allowance only holds while cmd/syncer/config.go lacks the
// variable: once it is there it is checked like any other.
var notYetInConfig = map[string]string{
	envPrefix + "SIGNING_KEY": "the signing branch (DESIGN.md: the syncer reads its Ed25519 NKey seed from the file it names)",
}

// configVar is one variable of cmd/syncer/config.go's spec.
type configVar struct {
	Name    string // with the prefix
	Default string
	Secret  bool
}

var (
	configOnce sync.Once
	configVars map[string]configVar
	configErr  error
)

// syncerConfig parses the spec struct of cmd/syncer/config.go (package main cannot be
// imported) and returns its variables by full name.
func syncerConfig(t *testing.T) map[string]configVar {
	t.Helper()
	configOnce.Do(func() { configVars, configErr = parseSpec(filepath.Join(root(t), "cmd", "syncer", "config.go")) })
	if configErr != nil {
		t.Fatal(configErr)
	}
	return configVars
}

func parseSpec(path string) (map[string]configVar, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	prefix := ""
	var fields []*ast.Field
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			for i, name := range n.Names {
				if name.Name == "envPrefix" && i < len(n.Values) {
					if lit, ok := n.Values[i].(*ast.BasicLit); ok {
						prefix, _ = strconv.Unquote(lit.Value)
					}
				}
			}
		case *ast.TypeSpec:
			if st, ok := n.Type.(*ast.StructType); ok && n.Name.Name == "spec" {
				fields = st.Fields.List
			}
		}
		return true
	})
	if prefix+"_" != envPrefix {
		return nil, &parseError{path, "envPrefix is " + strconv.Quote(prefix) + ", want " + strconv.Quote(strings.TrimSuffix(envPrefix, "_"))}
	}
	if len(fields) == 0 {
		return nil, &parseError{path, "no spec struct"}
	}
	out := map[string]configVar{}
	for _, fld := range fields {
		if fld.Tag == nil {
			continue
		}
		raw, err := strconv.Unquote(fld.Tag.Value)
		if err != nil {
			return nil, err
		}
		tag := reflect.StructTag(raw)
		name := tag.Get("envconfig")
		if name == "" {
			continue
		}
		out[envPrefix+name] = configVar{Name: envPrefix + name, Default: tag.Get("default"), Secret: tag.Get("secret") == "true"}
	}
	if len(out) < 10 {
		return nil, &parseError{path, "found only " + strconv.Itoa(len(out)) + " envconfig tags in spec"}
	}
	return out, nil
}

type parseError struct{ path, msg string }

func (e *parseError) Error() string { return e.path + ": " + e.msg }

// checkVariable reports whether name, set by the kit in where, is a variable of the
// syncer; prefixless names are not the syncer's business.
func checkVariable(t *testing.T, where, name string) {
	t.Helper()
	if !strings.HasPrefix(name, envPrefix) {
		return
	}
	if _, ok := syncerConfig(t)[name]; ok {
		return
	}
	if _, ok := notYetInConfig[name]; ok {
		return
	}
	t.Errorf("%s sets %s, which is not a variable of the syncer (cmd/syncer/config.go)", where, name)
}

// secretVariable reports whether name holds a secret: tagged secret, or the database URL
// (which may carry a password).
func secretVariable(t *testing.T, name string) bool {
	return syncerConfig(t)[name].Secret || name == envPrefix+"DATABASE_URL"
}

// leaderTTL is the lease TTL for settings (a variable's value when set there).
func leaderTTL(t *testing.T, settings map[string]string) time.Duration {
	t.Helper()
	v, ok := settings[envPrefix+"LEADER_TTL"]
	if !ok {
		v = syncerConfig(t)[envPrefix+"LEADER_TTL"].Default
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("LEADER_TTL %q: %v", v, err)
	}
	return d
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// staticBinary builds the syncer the way deploy/Dockerfile does (the same go build
// command, the same environment assignments) into a temporary directory, once.
func staticBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		var env, args []string
		env, args, binErr = dockerBuildCommand(readFile(t, "deploy/Dockerfile"))
		if binErr != nil {
			return
		}
		dir, err := os.MkdirTemp("", "registry-syncer-deploy-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "syncer")
		for i := range args {
			if args[i] == "-o" && i+1 < len(args) {
				args[i+1] = binPath
			}
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = root(t)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = &parseError{"go " + strings.Join(args, " "), err.Error() + "\n" + string(out)}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// lookTool finds a command the tests need, or fails saying how to install it.
func lookTool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed, and this test needs it: %s", name, install)
	}
	return p
}
