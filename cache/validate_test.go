package cache

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func validExt(id string) Extension {
	return Extension{
		ID: id, Type: TypeValidator, Subject: "ext." + id + ".v1", TimeoutMS: 250, Retry: 1, Enabled: true, Version: "v1",
		Config: json.RawMessage(`{"threshold":0.8}`), Metadata: json.RawMessage(`{}`),
	}
}

func validVersion(v string) Version {
	return Version{
		Version: v, Subject: "ext.x." + v, TimeoutMS: 100, Retry: 0, Enabled: true,
		Config: json.RawMessage(`{}`), Metadata: json.RawMessage(`{}`), RoutingRules: json.RawMessage(`{}`),
	}
}

func validInstance(id string) Instance {
	return Instance{InstanceID: id, Subject: "ext.x.v1." + id, Weight: 50, Enabled: true, HealthStatus: HealthHealthy}
}

func TestValidateRules(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("a", n) }
	for _, tc := range []struct {
		name string
		mod  func(e *Extension)
		want string // full message of one of the problems
	}{
		{"id empty", func(e *Extension) { e.ID = "" }, `extension "": id must match ^[a-z0-9_.-]{1,255}$ (got "")`},
		{"id uppercase", func(e *Extension) { e.ID = "PII" }, `extension "PII": id must match ^[a-z0-9_.-]{1,255}$ (got "PII")`},
		{"id space", func(e *Extension) { e.ID = "pii guard" }, `extension "pii guard": id must match ^[a-z0-9_.-]{1,255}$ (got "pii guard")`},
		{"id too long", func(e *Extension) { e.ID = long(256); e.Subject = "x.v1" }, `id must match ^[a-z0-9_.-]{1,255}$ (got 256 bytes)`},
		{"type", func(e *Extension) { e.Type = "middle" }, `extension "pii_guard": type must be one of pre, validator, post, provider (got "middle")`},
		{"type empty", func(e *Extension) { e.Type = "" }, `extension "pii_guard": type must be one of pre, validator, post, provider (got "")`},
		{"subject empty", func(e *Extension) { e.Subject = "" }, `extension "pii_guard": subject must not be empty`},
		{"subject empty token", func(e *Extension) { e.Subject = "ext..pii.v1" }, `extension "pii_guard": subject must be a valid NATS subject: tokens must not be empty (got "ext..pii.v1")`},
		{"subject leading dot", func(e *Extension) { e.Subject = ".ext.v1" }, `extension "pii_guard": subject must be a valid NATS subject: tokens must not be empty (got ".ext.v1")`},
		{"subject trailing dot", func(e *Extension) { e.Subject = "ext.v1." }, `subject must be a valid NATS subject: tokens must not be empty (got "ext.v1.")`},
		{"subject whitespace", func(e *Extension) { e.Subject = "ext.pii guard.v1" }, `extension "pii_guard": subject must be a valid NATS subject: whitespace and control characters are not allowed (got "ext.pii guard.v1")`},
		{"subject tab", func(e *Extension) { e.Subject = "ext.pii\tguard.v1" }, `subject must be a valid NATS subject: whitespace and control characters are not allowed`},
		{"subject unicode space", func(e *Extension) { e.Subject = "ext.pii\u00a0guard.v1" }, `subject must be a valid NATS subject: whitespace and control characters are not allowed`},
		{"subject star", func(e *Extension) { e.Subject = "ext.*.v1" }, `extension "pii_guard": subject must be a valid NATS subject: wildcards '*' and '>' are not allowed (got "ext.*.v1")`},
		{"subject gt", func(e *Extension) { e.Subject = "ext.>" }, `subject must be a valid NATS subject: wildcards '*' and '>' are not allowed (got "ext.>")`},
		{"subject star in token", func(e *Extension) { e.Subject = "ext.a*b.v1" }, `wildcards '*' and '>' are not allowed`},
		{"subject no version", func(e *Extension) { e.Subject = "ext.pii" }, `extension "pii_guard": subject must end with ".v<digits>" (got "ext.pii")`},
		{"subject bare version", func(e *Extension) { e.Subject = "v1" }, `subject must end with ".v<digits>" (got "v1")`},
		{"subject version letters", func(e *Extension) { e.Subject = "ext.pii.v1beta" }, `subject must end with ".v<digits>" (got "ext.pii.v1beta")`},
		{"subject version no digits", func(e *Extension) { e.Subject = "ext.pii.v" }, `subject must end with ".v<digits>" (got "ext.pii.v")`},
		{"subject too long", func(e *Extension) { e.Subject = long(510) + ".v1" }, `extension "pii_guard": subject must be at most 512 bytes (got 513)`},
		{"subject utf8", func(e *Extension) { e.Subject = "ext.\xff.v1" }, `extension "pii_guard": subject must be valid UTF-8`},
		{"timeout low", func(e *Extension) { e.TimeoutMS = 7 }, `extension "pii_guard": timeout_ms must be between 10 and 5000 (got 7)`},
		{"timeout high", func(e *Extension) { e.TimeoutMS = 5001 }, `extension "pii_guard": timeout_ms must be between 10 and 5000 (got 5001)`},
		{"retry negative", func(e *Extension) { e.Retry = -1 }, `extension "pii_guard": retry must be between 0 and 3 (got -1)`},
		{"retry high", func(e *Extension) { e.Retry = 4 }, `extension "pii_guard": retry must be between 0 and 3 (got 4)`},
		{"version empty", func(e *Extension) { e.Version = "" }, `extension "pii_guard": version must not be empty`},
		{"version long", func(e *Extension) { e.Version = long(65) }, `extension "pii_guard": version must be at most 64 bytes (got 65)`},
		{"version utf8", func(e *Extension) { e.Version = "v\xff" }, `extension "pii_guard": version must be valid UTF-8`},
		{"config array", func(e *Extension) { e.Config = json.RawMessage(`[1]`) }, `extension "pii_guard": config must be a JSON object (got array)`},
		{"config string", func(e *Extension) { e.Config = json.RawMessage(`"x"`) }, `extension "pii_guard": config must be a JSON object (got string)`},
		{"config number", func(e *Extension) { e.Config = json.RawMessage(`12`) }, `config must be a JSON object (got number)`},
		{"config duplicate key", func(e *Extension) { e.Config = json.RawMessage(`{"a":1,"a":2}`) }, `extension "pii_guard": config must be valid JSON: invalid JSON at offset 7: duplicate object key "a"`},
		{"config truncated", func(e *Extension) { e.Config = json.RawMessage(`{"a":`) }, `extension "pii_guard": config must be valid JSON: invalid JSON at offset 5: unexpected end of input`},
		{"config invalid utf8", func(e *Extension) { e.Config = json.RawMessage("{\"a\":\"\xff\"}") }, `config must be valid JSON: invalid JSON at offset 5: invalid UTF-8 in string`},
		{"metadata boolean", func(e *Extension) { e.Metadata = json.RawMessage(`true`) }, `extension "pii_guard": metadata must be a JSON object (got boolean)`},
		{"metadata garbage", func(e *Extension) { e.Metadata = json.RawMessage(`{}x`) }, `extension "pii_guard": metadata must be valid JSON: invalid JSON at offset 2: unexpected data after JSON value`},
		{"version timeout", func(e *Extension) { v := validVersion("v2"); v.TimeoutMS = 7; e.Versions = []Version{v} }, `extension "pii_guard": versions[v2].timeout_ms must be between 10 and 5000 (got 7)`},
		{"version retry", func(e *Extension) { v := validVersion("v2"); v.Retry = 9; e.Versions = []Version{v} }, `extension "pii_guard": versions[v2].retry must be between 0 and 3 (got 9)`},
		{"version subject", func(e *Extension) { v := validVersion("v2"); v.Subject = "ext.pii"; e.Versions = []Version{v} }, `extension "pii_guard": versions[v2].subject must end with ".v<digits>" (got "ext.pii")`},
		{"version subject wildcard", func(e *Extension) { v := validVersion("v2"); v.Subject = "ext.*.v2"; e.Versions = []Version{v} }, `extension "pii_guard": versions[v2].subject must be a valid NATS subject: wildcards '*' and '>' are not allowed (got "ext.*.v2")`},
		{"version empty", func(e *Extension) { v := validVersion(""); v.Subject = "a.v1"; e.Versions = []Version{v} }, `extension "pii_guard": versions[#0].version must not be empty`},
		{"version too long", func(e *Extension) { e.Versions = []Version{validVersion(long(65))} }, `versions[` + long(65) + `].version must be at most 64 bytes (got 65)`},
		{"version config", func(e *Extension) {
			v := validVersion("v2")
			v.Config = json.RawMessage(`[]`)
			e.Versions = []Version{v}
		}, `extension "pii_guard": versions[v2].config must be a JSON object (got array)`},
		{"version metadata", func(e *Extension) {
			v := validVersion("v2")
			v.Metadata = json.RawMessage(`{"a"}`)
			e.Versions = []Version{v}
		}, `extension "pii_guard": versions[v2].metadata must be valid JSON`},
		{"routing rules array", func(e *Extension) {
			v := validVersion("v2")
			v.RoutingRules = json.RawMessage(`["t1"]`)
			e.Versions = []Version{v}
		}, `extension "pii_guard": versions[v2].routing_rules must be a JSON object (got array)`},
		{"routing rules number", func(e *Extension) {
			v := validVersion("v2")
			v.RoutingRules = json.RawMessage(`{"tenant":1}`)
			e.Versions = []Version{v}
		}, `extension "pii_guard": versions[v2].routing_rules must be a JSON object whose values are strings or arrays of strings (key "tenant" has a value of type number)`},
		{"routing rules object", func(e *Extension) {
			v := validVersion("v2")
			v.RoutingRules = json.RawMessage(`{"tenant":{"a":"b"}}`)
			e.Versions = []Version{v}
		}, `versions[v2].routing_rules must be a JSON object whose values are strings or arrays of strings (key "tenant" has a value of type object)`},
		{"routing rules array of numbers", func(e *Extension) {
			v := validVersion("v2")
			v.RoutingRules = json.RawMessage(`{"tenant":["a",2]}`)
			e.Versions = []Version{v}
		}, `extension "pii_guard": versions[v2].routing_rules must be a JSON object whose values are strings or arrays of strings (key "tenant" has a non-string array element)`},
		{"routing rules null value", func(e *Extension) {
			v := validVersion("v2")
			v.RoutingRules = json.RawMessage(`{"tenant":null}`)
			e.Versions = []Version{v}
		}, `(key "tenant" has a value of type null)`},
		{"duplicate version", func(e *Extension) { e.Versions = []Version{validVersion("v2"), validVersion("v1"), validVersion("v2")} }, `extension "pii_guard": versions[v2] must be unique (duplicate version "v2")`},
		{"instance weight high", func(e *Extension) { in := validInstance("i1"); in.Weight = 101; e.Instances = []Instance{in} }, `extension "pii_guard": instances[i1].weight must be between 0 and 100 (got 101)`},
		{"instance weight negative", func(e *Extension) { in := validInstance("i1"); in.Weight = -1; e.Instances = []Instance{in} }, `extension "pii_guard": instances[i1].weight must be between 0 and 100 (got -1)`},
		{"instance health", func(e *Extension) { in := validInstance("i1"); in.HealthStatus = "sick"; e.Instances = []Instance{in} }, `extension "pii_guard": instances[i1].health_status must be one of healthy, degraded, unhealthy, unknown (got "sick")`},
		{"instance health empty", func(e *Extension) { in := validInstance("i1"); in.HealthStatus = ""; e.Instances = []Instance{in} }, `instances[i1].health_status must be one of healthy, degraded, unhealthy, unknown (got "")`},
		{"instance subject", func(e *Extension) { in := validInstance("i1"); in.Subject = "a..b"; e.Instances = []Instance{in} }, `extension "pii_guard": instances[i1].subject must be a valid NATS subject: tokens must not be empty (got "a..b")`},
		{"instance subject wildcard", func(e *Extension) { in := validInstance("i1"); in.Subject = "a.>"; e.Instances = []Instance{in} }, `extension "pii_guard": instances[i1].subject must be a valid NATS subject: wildcards '*' and '>' are not allowed (got "a.>")`},
		{"instance subject empty", func(e *Extension) { in := validInstance("i1"); in.Subject = ""; e.Instances = []Instance{in} }, `extension "pii_guard": instances[i1].subject must not be empty`},
		{"instance id empty", func(e *Extension) { e.Instances = []Instance{validInstance("")} }, `extension "pii_guard": instances[#0].instance_id must not be empty`},
		{"instance id long", func(e *Extension) { e.Instances = []Instance{validInstance(long(256))} }, `.instance_id must be at most 255 bytes (got 256)`},
		{"duplicate instance", func(e *Extension) {
			e.Instances = []Instance{validInstance("i2"), validInstance("i1"), validInstance("i2")}
		}, `extension "pii_guard": instances[i2] must be unique (duplicate instance_id "i2")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := validExt("pii_guard")
			tc.mod(&e)
			err := e.Validate()
			if err == nil {
				t.Fatalf("Validate accepted %+v", e)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Errorf("error has no *ValidationError: %v", err)
			}
			if !containsLine(err.Error(), tc.want) {
				t.Errorf("error\n%v\nhas no line containing\n%s", err, tc.want)
			}
			if _, nerr := New(1, "test", []Extension{e}); nerr == nil || !containsLine(nerr.Error(), tc.want) {
				t.Errorf("New error %v, want %s", nerr, tc.want)
			}
			if _, cerr := Canonical(&e); cerr == nil || !containsLine(cerr.Error(), tc.want) {
				t.Errorf("Canonical error %v, want %s", cerr, tc.want)
			}
		})
	}
}

func containsLine(msg, want string) bool {
	for line := range strings.SplitSeq(msg, "\n") {
		if strings.Contains(line, want) {
			return true
		}
	}
	return false
}

func TestValidateCollectsAllProblems(t *testing.T) {
	t.Parallel()
	e := validExt("pii_guard")
	e.TimeoutMS = 7
	e.Retry = 9
	e.Type = "x"
	in := validInstance("i1")
	in.Weight = 500
	e.Instances = []Instance{in}
	err := e.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`extension "pii_guard": timeout_ms must be between 10 and 5000 (got 7)`,
		`extension "pii_guard": retry must be between 0 and 3 (got 9)`,
		`extension "pii_guard": type must be one of`,
		`extension "pii_guard": instances[i1].weight must be between 0 and 100 (got 500)`,
	} {
		if !containsLine(err.Error(), want) {
			t.Errorf("missing %q in\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 4 {
		t.Errorf("%d problems reported, want 4:\n%v", n, err)
	}
}

func TestValidateAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mod  func(e *Extension)
	}{
		{"base", func(e *Extension) {}},
		{"null raw fields", func(e *Extension) { e.Config = json.RawMessage("null"); e.Metadata = nil }},
		{"empty raw fields", func(e *Extension) { e.Config = json.RawMessage(""); e.Metadata = json.RawMessage("  ") }},
		{"bounds low", func(e *Extension) { e.TimeoutMS = 10; e.Retry = 0 }},
		{"bounds high", func(e *Extension) { e.TimeoutMS = 5000; e.Retry = 3 }},
		{"id charset", func(e *Extension) { e.ID = "a-z_0.9" }},
		{"id 255", func(e *Extension) { e.ID = strings.Repeat("x", 255) }},
		{"subject 512", func(e *Extension) { e.Subject = strings.Repeat("a", 509) + ".v1" }},
		{"subject unicode", func(e *Extension) { e.Subject = "ext.é.v10" }},
		{"version 64", func(e *Extension) { e.Version = strings.Repeat("v", 64) }},
		{"unsorted children", func(e *Extension) {
			e.Versions = []Version{validVersion("v3"), validVersion("v1")}
			e.Instances = []Instance{validInstance("b"), validInstance("a")}
		}},
		{"instance subject without version", func(e *Extension) {
			in := validInstance("i1")
			in.Subject = "ext.pii.instance"
			e.Instances = []Instance{in}
		}},
		{"instance weights", func(e *Extension) {
			a, b := validInstance("a"), validInstance("b")
			a.Weight, b.Weight = 0, 100
			a.HealthStatus, b.HealthStatus = HealthUnknown, HealthUnhealthy
			e.Instances = []Instance{a, b}
		}},
		{"routing rules forms", func(e *Extension) {
			v := validVersion("v2")
			v.RoutingRules = json.RawMessage(`{"tenant":["a","b"],"region":"eu","none":[]}`)
			w := validVersion("v3")
			w.RoutingRules = nil
			e.Versions = []Version{v, w}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := validExt("pii_guard")
			tc.mod(&e)
			before := cloneExtension(&e)
			if err := e.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !reflect.DeepEqual(before, e) {
				t.Errorf("Validate modified its receiver")
			}
		})
	}
}

func TestNewNormalizes(t *testing.T) {
	t.Parallel()
	e := validExt("norm")
	e.Config = nil
	e.Metadata = json.RawMessage(" null ")
	v1, v3 := validVersion("v3"), validVersion("v1")
	v1.RoutingRules = json.RawMessage(`null`)
	e.Versions = []Version{v1, v3}
	e.Instances = []Instance{validInstance("z"), validInstance("a")}
	s, err := New(1, "test", []Extension{e, validExt("bare")})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get("norm")
	if string(got.Config) != "{}" || string(got.Metadata) != "{}" || string(got.Versions[1].RoutingRules) != "{}" {
		t.Errorf("raw fields not normalized: %q %q %q", got.Config, got.Metadata, got.Versions[1].RoutingRules)
	}
	if got.Versions[0].Version != "v1" || got.Instances[0].InstanceID != "a" {
		t.Errorf("children not sorted: %+v %+v", got.Versions, got.Instances)
	}
	bare, _ := s.Get("bare")
	if bare.Versions == nil || bare.Instances == nil {
		t.Errorf("empty children must be [] not nil")
	}
	b, _ := json.Marshal(bare)
	if !strings.Contains(string(b), `"versions":[]`) || !strings.Contains(string(b), `"instances":[]`) {
		t.Errorf("encoding/json of a snapshot extension: %s", b)
	}
	// The input slices are untouched.
	if e.Versions[0].Version != "v3" || e.Instances[0].InstanceID != "z" || e.Config != nil {
		t.Errorf("New modified its input")
	}
}
