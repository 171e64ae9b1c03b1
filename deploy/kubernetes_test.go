package deploy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"
)

// The parts of the Kubernetes objects the tests look at.
type (
	object struct {
		APIVersion string            `yaml:"apiVersion"`
		Kind       string            `yaml:"kind"`
		Metadata   meta              `yaml:"metadata"`
		Data       map[string]string `yaml:"data"`       // ConfigMap
		StringData map[string]string `yaml:"stringData"` // Secret
		Spec       spec              `yaml:"spec"`
		Resources  []string          `yaml:"resources"` // Kustomization
		Images     []struct {
			Name string `yaml:"name"`
		} `yaml:"images"`
		file string
	}
	meta struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	}
	spec struct {
		Replicas     *int      `yaml:"replicas"`
		Selector     yaml.Node `yaml:"selector"` // a label selector, or a Service's map
		Template     *template `yaml:"template"`
		MinAvailable *int      `yaml:"minAvailable"`
		Ports        []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
		Strategy struct {
			RollingUpdate struct {
				MaxUnavailable *int `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
	}
	template struct {
		Metadata meta    `yaml:"metadata"`
		Spec     podSpec `yaml:"spec"`
	}
	podSpec struct {
		TerminationGracePeriodSeconds *int `yaml:"terminationGracePeriodSeconds"`
		SecurityContext               struct {
			RunAsNonRoot *bool `yaml:"runAsNonRoot"`
			RunAsUser    *int  `yaml:"runAsUser"`
		} `yaml:"securityContext"`
		Containers     []container `yaml:"containers"`
		InitContainers []container `yaml:"initContainers"`
		Volumes        []struct {
			Name   string `yaml:"name"`
			Secret *struct {
				SecretName string `yaml:"secretName"`
				Items      []struct {
					Key  string `yaml:"key"`
					Path string `yaml:"path"`
				} `yaml:"items"`
			} `yaml:"secret"`
		} `yaml:"volumes"`
	}
	container struct {
		Name    string   `yaml:"name"`
		Image   string   `yaml:"image"`
		Args    []string `yaml:"args"`
		Command []string `yaml:"command"`
		Ports   []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		EnvFrom []struct {
			ConfigMapRef *struct{ Name string } `yaml:"configMapRef"`
			SecretRef    *struct{ Name string } `yaml:"secretRef"`
		} `yaml:"envFrom"`
		Env []struct {
			Name      string  `yaml:"name"`
			Value     *string `yaml:"value"`
			ValueFrom *struct {
				SecretKeyRef    *struct{ Name, Key string } `yaml:"secretKeyRef"`
				ConfigMapKeyRef *struct{ Name, Key string } `yaml:"configMapKeyRef"`
			} `yaml:"valueFrom"`
		} `yaml:"env"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
		ReadinessProbe *probe     `yaml:"readinessProbe"`
		LivenessProbe  *probe     `yaml:"livenessProbe"`
		StartupProbe   *probe     `yaml:"startupProbe"`
		Lifecycle      *yaml.Node `yaml:"lifecycle"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext struct {
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
			RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
			Privileged               *bool `yaml:"privileged"`
			Capabilities             struct {
				Drop []string `yaml:"drop"`
			} `yaml:"capabilities"`
		} `yaml:"securityContext"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"` // a name or a number
		} `yaml:"httpGet"`
	}
)

// manifests decodes every document of deploy/kubernetes/*.yaml.
func manifests(t *testing.T) []*object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root(t), "deploy", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes (%v)", err)
	}
	var out []*object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			o := &object{file: filepath.Base(f)}
			if err := dec.Decode(o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o.Kind == "" {
				t.Fatalf("%s: a document without kind", f)
			}
			out = append(out, o)
		}
	}
	return out
}

// apiVersions are the current API versions of the kinds the kit uses.
var apiVersions = map[string]string{
	"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1", "ServiceAccount": "v1",
	"PodDisruptionBudget": "policy/v1", "Job": "batch/v1", "Kustomization": "kustomize.config.k8s.io/v1beta1",
}

func TestKubernetesKinds(t *testing.T) {
	for _, o := range manifests(t) {
		want, ok := apiVersions[o.Kind]
		switch {
		case !ok:
			t.Errorf("%s: kind %s is not checked by these tests: add it to apiVersions and check what matters", o.file, o.Kind)
		case o.APIVersion != want:
			t.Errorf("%s: %s apiVersion %s, want %s", o.file, o.Kind, o.APIVersion, want)
		case o.Kind != "Kustomization" && (o.Metadata.Name == "" || o.Metadata.Labels["app.kubernetes.io/name"] != "registry-syncer"):
			t.Errorf("%s: %s %q: want a name and the label app.kubernetes.io/name: registry-syncer", o.file, o.Kind, o.Metadata.Name)
		}
	}
}

func find(objs []*object, kind, name string) *object {
	for _, o := range objs {
		if o.Kind == kind && (name == "" || o.Metadata.Name == name) {
			return o
		}
	}
	return nil
}

// matchLabels is a selector's matchLabels (or a Service's plain map).
func matchLabels(t *testing.T, n yaml.Node) map[string]string {
	t.Helper()
	var sel struct {
		MatchLabels      map[string]string `yaml:"matchLabels"`
		MatchExpressions []any             `yaml:"matchExpressions"`
	}
	if err := n.Decode(&sel); err == nil && sel.MatchLabels != nil {
		if len(sel.MatchExpressions) > 0 {
			t.Fatal("selectors with matchExpressions are not checked: use matchLabels")
		}
		return sel.MatchLabels
	}
	var plain map[string]string
	if err := n.Decode(&plain); err != nil {
		t.Fatalf("selector: %v", err)
	}
	return plain
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestKubernetesDeployment(t *testing.T) {
	objs := manifests(t)
	d := find(objs, "Deployment", "")
	if d == nil || d.Spec.Template == nil {
		t.Fatal("no Deployment with a pod template in deploy/kubernetes")
	}
	pod := d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("Deployment replicas %s, want 2 (a leader and a standby)", intp(d.Spec.Replicas))
	}
	sel := matchLabels(t, d.Spec.Selector)
	if !selects(sel, d.Spec.Template.Metadata.Labels) {
		t.Errorf("Deployment selector %v does not select its pods %v", sel, d.Spec.Template.Metadata.Labels)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Command) > 0 || (len(c.Args) > 0 && strings.Join(c.Args, " ") != "run") {
		t.Errorf("container runs %v %v, want the image's ENTRYPOINT with run", c.Command, c.Args)
	}

	// The HTTP port: what the pod's configuration says, and the container port probes use.
	settings := podSettings(t, objs, c)
	addr, ok := settings[envPrefix+"HTTP_ADDR"]
	if !ok {
		t.Fatalf("the pod does not set %sHTTP_ADDR: the default %s is unreachable", envPrefix, syncerConfig(t)[envPrefix+"HTTP_ADDR"].Default)
	}
	_, httpPort, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%sHTTP_ADDR %q: %v", envPrefix, addr, err)
	}
	portOf := func(ref string) string { // a port name or number → the container port number
		for _, p := range c.Ports {
			if p.Name == ref || strconv.Itoa(p.ContainerPort) == ref {
				return strconv.Itoa(p.ContainerPort)
			}
		}
		return ""
	}
	for _, pr := range []struct {
		name  string
		probe *probe
		path  string
	}{{"readinessProbe", c.ReadinessProbe, "/readyz"}, {"livenessProbe", c.LivenessProbe, "/healthz"}, {"startupProbe", c.StartupProbe, "/healthz"}} {
		switch {
		case pr.probe == nil && pr.name == "startupProbe":
		case pr.probe == nil || pr.probe.HTTPGet == nil:
			t.Errorf("%s: want an httpGet probe of %s", pr.name, pr.path)
		case pr.probe.HTTPGet.Path != pr.path:
			t.Errorf("%s path %s, want %s", pr.name, pr.probe.HTTPGet.Path, pr.path)
		case portOf(pr.probe.HTTPGet.Port) != httpPort:
			t.Errorf("%s port %q is container port %q, want the HTTP port %s (%sHTTP_ADDR=%s)", pr.name, pr.probe.HTTPGet.Port, portOf(pr.probe.HTTPGet.Port), httpPort, envPrefix, addr)
		}
	}

	// Shutdown: SIGTERM alone (the syncer releases the lease), time enough for it.
	if c.Lifecycle != nil {
		t.Error("no lifecycle hooks: SIGTERM is the graceful stop (the syncer releases the lease itself)")
	}
	ttl := leaderTTL(t, settings)
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= ttl || *g < 20 {
		t.Errorf("terminationGracePeriodSeconds %s: want above LEADER_TTL (%s) and at least the shutdown's 20 s (NATS drain 15 s, HTTP 5 s)", intp(g), ttl)
	}
	if mu := d.Spec.Strategy.RollingUpdate.MaxUnavailable; mu == nil || *mu != 0 {
		t.Errorf("rollingUpdate.maxUnavailable %s, want 0 (the new standby is ready before an old pod stops)", intp(mu))
	}

	// Security.
	if !isTrue(pod.SecurityContext.RunAsNonRoot) && !isTrue(c.SecurityContext.RunAsNonRoot) {
		t.Error("runAsNonRoot: true is not set")
	}
	if u := pod.SecurityContext.RunAsUser; u != nil && *u == 0 {
		t.Error("runAsUser 0")
	}
	sc := c.SecurityContext
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Error("readOnlyRootFilesystem: true is not set")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation: false is not set")
	}
	if isTrue(sc.Privileged) {
		t.Error("privileged")
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("resources.requests.%s is not set", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Error("resources.limits.memory is not set")
	}

	// The image is the one kustomization.yaml pins.
	if k := find(objs, "Kustomization", ""); k != nil {
		pinned := false
		for _, im := range k.Images {
			pinned = pinned || im.Name == c.Image
		}
		if !pinned {
			t.Errorf("kustomization.yaml images do not name the container image %q", c.Image)
		}
		for _, r := range k.Resources {
			if _, err := os.Stat(filepath.Join(root(t), "deploy", "kubernetes", r)); err != nil {
				t.Errorf("kustomization.yaml resource %s: %v", r, err)
			}
		}
		for _, kind := range []string{"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} {
			if o := find(objs, kind, ""); o != nil && !slices.Contains(k.Resources, o.file) {
				t.Errorf("kustomization.yaml does not list %s (the %s)", o.file, kind)
			}
		}
	}
}

func TestKubernetesPDBAndService(t *testing.T) {
	objs := manifests(t)
	d := find(objs, "Deployment", "")
	if d == nil || d.Spec.Template == nil {
		t.Fatal("no Deployment")
	}
	podLabels := d.Spec.Template.Metadata.Labels
	dsel := matchLabels(t, d.Spec.Selector)

	pdb := find(objs, "PodDisruptionBudget", "")
	if pdb == nil {
		t.Fatal("no PodDisruptionBudget")
	}
	if pdb.APIVersion != "policy/v1" {
		t.Errorf("PodDisruptionBudget apiVersion %s, want policy/v1", pdb.APIVersion)
	}
	if pdb.Spec.MinAvailable == nil || *pdb.Spec.MinAvailable != 1 {
		t.Errorf("PodDisruptionBudget minAvailable %s, want 1", intp(pdb.Spec.MinAvailable))
	}
	psel := matchLabels(t, pdb.Spec.Selector)
	if !selects(psel, podLabels) || !selects(dsel, psel) {
		t.Errorf("PodDisruptionBudget selector %v, want the Deployment's pods (selector %v, labels %v)", psel, dsel, podLabels)
	}

	svc := find(objs, "Service", "")
	if svc == nil {
		t.Fatal("no Service")
	}
	if ssel := matchLabels(t, svc.Spec.Selector); !selects(ssel, podLabels) {
		t.Errorf("Service selector %v does not select the Deployment's pods %v", ssel, podLabels)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if len(svc.Spec.Ports) == 0 {
		t.Fatal("Service has no port")
	}
	for _, p := range svc.Spec.Ports {
		ok := false
		for _, cp := range c.Ports {
			ok = ok || p.TargetPort == cp.Name || p.TargetPort == strconv.Itoa(cp.ContainerPort)
		}
		if !ok {
			t.Errorf("Service port %s targets %q, not a port of the container", p.Name, p.TargetPort)
		}
	}
}

// TestKubernetesVariables: every EXTENSION_REGISTRY_* variable any workload sets is one
// of the syncer's; secrets come from a Secret, never from a ConfigMap or a literal; what
// a workload references (ConfigMap, Secret keys, mounted files) exists.
func TestKubernetesVariables(t *testing.T) {
	objs := manifests(t)
	secret := find(objs, "Secret", "")
	if secret == nil {
		t.Fatal("no Secret (example) in deploy/kubernetes")
	}
	for _, o := range objs {
		if o.Kind == "ConfigMap" {
			for k := range o.Data {
				if !strings.HasPrefix(k, envPrefix) {
					t.Errorf("%s: ConfigMap key %s: the ConfigMap is injected whole with envFrom, so every key must be an %s* variable", o.file, k, envPrefix)
				}
				checkVariable(t, o.file+" ConfigMap", k)
				if secretVariable(t, k) {
					t.Errorf("%s: %s is a secret: put it in the Secret", o.file, k)
				}
			}
		}
	}
	workloads := 0
	for _, o := range objs {
		if o.Spec.Template == nil {
			continue
		}
		workloads++
		pod := o.Spec.Template.Spec
		secretFiles := map[string]string{} // mount path of each file → Secret key
		mounts := map[string]string{}      // volume name → mount path
		for _, c := range append(pod.InitContainers, pod.Containers...) {
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m.MountPath
			}
		}
		for _, v := range pod.Volumes {
			if v.Secret == nil {
				continue
			}
			if v.Secret.SecretName != secret.Metadata.Name {
				t.Errorf("%s: volume %s mounts Secret %s, not %s", o.file, v.Name, v.Secret.SecretName, secret.Metadata.Name)
			}
			for _, it := range v.Secret.Items {
				if _, ok := secret.StringData[it.Key]; !ok {
					t.Errorf("%s: volume %s: the Secret has no key %s", o.file, v.Name, it.Key)
				}
				if mp, ok := mounts[v.Name]; ok {
					secretFiles[filepath.Join(mp, it.Path)] = it.Key
				}
			}
		}
		for _, c := range append(pod.InitContainers, pod.Containers...) {
			where := o.file + " " + o.Kind + " container " + c.Name
			for _, ef := range c.EnvFrom {
				switch {
				case ef.ConfigMapRef != nil:
					if find(objs, "ConfigMap", ef.ConfigMapRef.Name) == nil {
						t.Errorf("%s: envFrom ConfigMap %s is not in deploy/kubernetes", where, ef.ConfigMapRef.Name)
					}
				case ef.SecretRef != nil:
					t.Errorf("%s: envFrom a Secret injects every key: reference the secret variables one by one", where)
				}
			}
			for _, e := range c.Env {
				checkVariable(t, where, e.Name)
				if !strings.HasPrefix(e.Name, envPrefix) {
					continue
				}
				switch {
				case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
					ref := e.ValueFrom.SecretKeyRef
					if ref.Name != secret.Metadata.Name {
						t.Errorf("%s: %s from Secret %s, not %s", where, e.Name, ref.Name, secret.Metadata.Name)
					} else if _, ok := secret.StringData[ref.Key]; !ok {
						t.Errorf("%s: %s from Secret key %s, which the Secret does not have", where, e.Name, ref.Key)
					}
				case secretVariable(t, e.Name):
					t.Errorf("%s: %s is a secret: take it from the Secret (secretKeyRef)", where, e.Name)
				case e.Value != nil && fileVariables[e.Name]:
					if _, ok := secretFiles[*e.Value]; !ok {
						t.Errorf("%s: %s=%s is not a file mounted from the Secret (%v)", where, e.Name, *e.Value, secretFiles)
					}
				}
			}
		}
	}
	if workloads == 0 {
		t.Fatal("no workload (pod template) in deploy/kubernetes")
	}
}

// fileVariables name files of secrets the syncer reads itself.
var fileVariables = map[string]bool{
	envPrefix + "NATS_CREDS": true, envPrefix + "NATS_NKEY": true, envPrefix + "NATS_TLS_KEY": true,
	envPrefix + "SIGNING_KEY": true,
}

// podSettings are the EXTENSION_REGISTRY_* values container c sets (envFrom, then env).
func podSettings(t *testing.T, objs []*object, c container) map[string]string {
	out := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			if cm := find(objs, "ConfigMap", ef.ConfigMapRef.Name); cm != nil {
				for k, v := range cm.Data {
					out[k] = v
				}
			}
		}
	}
	for _, e := range c.Env {
		if e.Value != nil {
			out[e.Name] = *e.Value
		}
	}
	return out
}

func isTrue(b *bool) bool { return b != nil && *b }

func intp(p *int) string {
	if p == nil {
		return "unset"
	}
	return strconv.Itoa(*p)
}

// TestKubernetesConfigurationIsValid runs the syncer built as the image builds it with
// each workload's environment — the image's ENV, the ConfigMap, the Secret example's
// values, the secret files written to a temporary directory — and checks that its
// configuration check accepts every value. `syncer status` validates the whole
// configuration before it connects; its connection to the manifests' NATS hosts (not
// resolvable here) then fails, which is expected.
func TestKubernetesConfigurationIsValid(t *testing.T) {
	objs := manifests(t)
	secret := find(objs, "Secret", "")
	if secret == nil {
		t.Fatal("no Secret (example) in deploy/kubernetes")
	}
	stages, _, err := parseDockerfile(readFile(t, "deploy/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	imageEnv := map[string]string{}
	for _, in := range stages[len(stages)-1].Body {
		if in.Cmd == "ENV" {
			for _, kv := range strings.Fields(in.Args) {
				k, v, _ := strings.Cut(kv, "=")
				imageEnv[k] = v
			}
		}
	}
	for _, o := range objs {
		if o.Spec.Template == nil {
			continue
		}
		pod := o.Spec.Template.Spec
		for _, c := range pod.Containers {
			dir := t.TempDir()
			// Secret files at their mount paths, moved under dir.
			files := map[string]string{}
			for _, v := range pod.Volumes {
				if v.Secret == nil {
					continue
				}
				for _, m := range c.VolumeMounts {
					if m.Name != v.Name {
						continue
					}
					for _, it := range v.Secret.Items {
						p := filepath.Join(dir, it.Path)
						if err := os.WriteFile(p, secretFileContent(t, it.Path, secret.StringData[it.Key]), 0o600); err != nil {
							t.Fatal(err)
						}
						files[filepath.Join(m.MountPath, it.Path)] = p
					}
				}
			}
			env := map[string]string{}
			for k, v := range imageEnv {
				env[k] = v
			}
			for k, v := range podSettings(t, objs, c) {
				env[k] = v
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					env[e.Name] = secret.StringData[e.ValueFrom.SecretKeyRef.Key]
				}
			}
			for k, v := range env {
				if p, ok := files[v]; ok {
					env[k] = p
				}
			}
			checkConfigAccepted(t, o.file+" "+o.Kind+" container "+c.Name, env)
		}
	}
}

// checkConfigAccepted runs the syncer built as the image builds it with exactly env and
// fails unless its configuration check accepts every value. `syncer status` validates the
// whole configuration before it connects; the connection then fails (the kit's NATS hosts
// do not resolve here), which is expected: nothing here is ever reached.
func checkConfigAccepted(t *testing.T, where string, env map[string]string) {
	t.Helper()
	dir := t.TempDir()
	list := []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	if _, ok := env[envPrefix+"NATS_URL"]; !ok {
		// Never the default, 127.0.0.1:4222: a NATS server of this machine. .invalid
		// never resolves (RFC 2606).
		list = append(list, envPrefix+"NATS_URL=nats://nats.invalid:4222")
	}
	for k, v := range env {
		if _, pending := notYetInConfig[k]; pending {
			if _, known := syncerConfig(t)[k]; !known {
				continue // this binary does not read it
			}
		}
		list = append(list, k+"="+v)
	}
	cmd := exec.Command(staticBinary(t), "status", "--timeout", "1s")
	cmd.Env, cmd.Dir = list, dir
	timer := time.AfterFunc(30*time.Second, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	})
	out, _ := cmd.CombinedOutput()
	timer.Stop()
	switch {
	case strings.Contains(string(out), "invalid configuration"):
		t.Errorf("%s: the syncer refuses the configuration:\n%s", where, out)
	case !strings.Contains(string(out), "NATS"):
		t.Errorf("%s: want the configuration accepted and the NATS connection to fail, got:\n%s", where, out)
	}
}

// secretFileContent is what a test writes for a secret file: a fresh NKey user seed for an
// NKey seed file (*.nk: the example's placeholder is not one, and the syncer checks it),
// else the example's value.
func secretFileContent(t *testing.T, name, example string) []byte {
	t.Helper()
	if !strings.HasSuffix(name, ".nk") {
		return []byte(example)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return seed
}
