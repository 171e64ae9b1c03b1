package deploy

import (
	"debug/elf"
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd  string // upper case: FROM, RUN, COPY, ...
	Args string
	Line int
}

// stage is one FROM ... and what follows it.
type stage struct {
	Image, Name string
	Body        []instruction
}

func parseDockerfile(src string) (stages []stage, comments []string, err error) {
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			st := stage{Image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.Name = f[2]
			}
			stages = append(stages, st)
			return
		}
		if len(stages) == 0 {
			if in.Cmd != "ARG" {
				err = errors.New("line " + strconv.Itoa(start) + ": " + in.Cmd + " before the first FROM")
			}
			return
		}
		stages[len(stages)-1].Body = append(stages[len(stages)-1].Body, in)
	}
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			comments = append(comments, trimmed)
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages, comments, err
}

// dockerBuildCommand returns the environment assignments and the go arguments of the
// build stage's RUN ... go build.
func dockerBuildCommand(src string) (env, args []string, err error) {
	stages, _, err := parseDockerfile(src)
	if err != nil {
		return nil, nil, err
	}
	for _, st := range stages {
		for _, in := range st.Body {
			if in.Cmd != "RUN" || !strings.Contains(in.Args, "go build") {
				continue
			}
			f := strings.Fields(in.Args)
			for len(f) > 0 && strings.Contains(f[0], "=") {
				env, f = append(env, f[0]), f[1:]
			}
			if len(f) < 2 || f[0] != "go" || f[1] != "build" {
				return nil, nil, errors.New("Dockerfile: the go build RUN must be `VAR=value ... go build ...` without shell syntax: " + in.Args)
			}
			return env, f[1:], nil
		}
	}
	return nil, nil, errors.New("Dockerfile: no RUN ... go build")
}

func TestDockerfile(t *testing.T) {
	src := readFile(t, "deploy/Dockerfile")
	stages, comments, err := parseDockerfile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.Image, "golang:1.26") || build.Name == "" {
		t.Errorf("first stage is FROM %s AS %q, want FROM golang:1.26 AS <name>", build.Image, build.Name)
	}
	if final.Image != "scratch" && !strings.HasPrefix(final.Image, "gcr.io/distroless/static") {
		t.Errorf("final stage is FROM %s, want distroless/static or scratch", final.Image)
	}

	env, args, err := dockerBuildCommand(src)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(env, "CGO_ENABLED=0") {
		t.Errorf("go build runs with %v, want CGO_ENABLED=0", env)
	}
	for _, want := range []string{"-trimpath", "-ldflags=-s", "./cmd/syncer"} {
		if !slices.Contains(args, want) {
			t.Errorf("go %s: missing %s", strings.Join(args, " "), want)
		}
	}
	out := ""
	for i, a := range args {
		if a == "-o" && i+1 < len(args) {
			out = args[i+1]
		}
	}
	if out == "" {
		t.Fatalf("go %s: no -o", strings.Join(args, " "))
	}

	byCmd := map[string][]instruction{}
	for _, in := range final.Body {
		byCmd[in.Cmd] = append(byCmd[in.Cmd], in)
	}
	copied := ""
	for _, in := range byCmd["COPY"] {
		f := strings.Fields(in.Args)
		if len(f) == 3 && f[0] == "--from="+build.Name && f[1] == out {
			copied = f[2]
		}
	}
	if copied == "" {
		t.Fatalf("the final stage does not COPY --from=%s %s (the binary go build writes)", build.Name, out)
	}
	var entry, cmd []string
	if e := byCmd["ENTRYPOINT"]; len(e) != 1 || json.Unmarshal([]byte(e[0].Args), &entry) != nil {
		t.Errorf("want one ENTRYPOINT in exec (JSON) form, got %v", e)
	}
	if len(entry) != 1 || entry[0] != copied || copied != "/syncer" {
		t.Errorf("ENTRYPOINT %v, want [\"/syncer\"], the path the binary is copied to (%s)", entry, copied)
	}
	if c := byCmd["CMD"]; len(c) != 1 || json.Unmarshal([]byte(c[0].Args), &cmd) != nil || len(cmd) != 1 || cmd[0] != "run" {
		t.Errorf("want CMD [\"run\"], got %v", c)
	}

	users := byCmd["USER"]
	if len(users) == 0 {
		t.Fatal("the final stage has no USER: it would run as root")
	}
	user, _, _ := strings.Cut(users[len(users)-1].Args, ":")
	if uid, err := strconv.Atoi(user); err != nil || uid == 0 {
		t.Errorf("USER %s: want a numeric non-root uid (Kubernetes' runAsNonRoot can only check a number)", users[len(users)-1].Args)
	}

	// ENV: only real variables; EXPOSE: the HTTP port they set.
	envs := map[string]string{}
	for _, in := range byCmd["ENV"] {
		for _, kv := range strings.Fields(in.Args) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Errorf("ENV %s: use the KEY=value form", in.Args)
				continue
			}
			checkVariable(t, "Dockerfile ENV", k)
			envs[k] = v
		}
	}
	addr, ok := envs[envPrefix+"HTTP_ADDR"]
	if !ok {
		t.Fatalf("the image keeps the default %s=%s, unreachable from outside the container", envPrefix+"HTTP_ADDR", syncerConfig(t)[envPrefix+"HTTP_ADDR"].Default)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || (host != "" && host != "0.0.0.0" && host != "::") {
		t.Errorf("ENV %sHTTP_ADDR=%s: want every interface (:PORT)", envPrefix, addr)
	}
	if e := byCmd["EXPOSE"]; len(e) != 1 || strings.TrimSuffix(e[0].Args, "/tcp") != port {
		t.Errorf("EXPOSE %v, want the HTTP port %s", e, port)
	}

	if len(byCmd["HEALTHCHECK"]) > 0 {
		t.Error("HEALTHCHECK: Kubernetes ignores it and the image has no client to run it with")
	}
	said := false
	for _, c := range comments {
		said = said || strings.Contains(c, "HEALTHCHECK")
	}
	if !said {
		t.Error("say in a comment why there is no HEALTHCHECK")
	}
}

// TestStaticBinary builds the syncer with the Dockerfile's own go build command and
// checks that the result needs no dynamic loader and no shared library: it runs on
// distroless/static or scratch.
func TestStaticBinary(t *testing.T) {
	bin := staticBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %s program header: it is dynamically linked", bin, p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s imports shared libraries %v (%v)", bin, libs, err)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: -ldflags=-s did not strip it", bin)
	}
	// The same verdict from file(1) where it is installed (Debian: apt-get install file).
	if p, err := exec.LookPath("file"); err == nil {
		out, err := exec.Command(p, bin).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "statically linked") {
			t.Errorf("file %s: %s (%v), want statically linked", bin, out, err)
		}
	}
	// It runs and is the syncer.
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "go1.26") {
		t.Errorf("%s version: %s (%v)", bin, out, err)
	}
}
