package cache

import (
	"encoding/json"
	"testing"

	"github.com/beamline/registry-syncer/rules"
)

func TestSelectVersion(t *testing.T) {
	t.Parallel()
	ver := func(v string, enabled bool, rules string) Version {
		x := validVersion(v)
		x.Subject = "ext.sel." + v + ".v1"
		x.Enabled = enabled
		x.RoutingRules = json.RawMessage(rules)
		x.Config = json.RawMessage(`{"v":"` + v + `"}`)
		return x
	}
	for _, tc := range []struct {
		name     string
		versions []Version
		attrs    map[string]string
		want     string
	}{
		{"no versions", nil, map[string]string{"tenant": "t1"}, "v1"},
		{"tenant list match", []Version{ver("v2", true, `{"tenant":["t1","t2"]}`)}, map[string]string{"tenant": "t2"}, "v2"},
		{"tenant list miss", []Version{ver("v2", true, `{"tenant":["t1","t2"]}`)}, map[string]string{"tenant": "t3"}, "v1"},
		{"string rule", []Version{ver("v2", true, `{"region":"eu"}`)}, map[string]string{"region": "eu", "tenant": "x"}, "v2"},
		{"string rule miss", []Version{ver("v2", true, `{"region":"eu"}`)}, map[string]string{"region": "us"}, "v1"},
		{"missing attribute", []Version{ver("v2", true, `{"region":"eu","tenant":"t1"}`)}, map[string]string{"tenant": "t1"}, "v1"},
		{"nil attrs", []Version{ver("v2", true, `{"tenant":"t1"}`)}, nil, "v1"},
		{"empty array matches nothing", []Version{ver("v2", true, `{"tenant":[]}`)}, map[string]string{"tenant": ""}, "v1"},
		{"most specific wins", []Version{
			ver("v5", true, `{"tenant":"t1"}`),
			ver("v3", true, `{"tenant":"t1","region":"eu"}`),
		}, map[string]string{"tenant": "t1", "region": "eu"}, "v3"},
		{"tie goes to newer numerically", []Version{
			ver("v9", true, `{"tenant":"t1"}`),
			ver("v10", true, `{"tenant":["t1","t2"]}`),
			ver("v2", true, `{"tenant":"t1"}`),
		}, map[string]string{"tenant": "t1"}, "v10"},
		{"tie bytewise for other names", []Version{
			ver("beta", true, `{"tenant":"t1"}`),
			ver("alpha", true, `{"tenant":"t1"}`),
		}, map[string]string{"tenant": "t1"}, "beta"},
		{"tie mixed names bytewise", []Version{
			ver("v2", true, `{"tenant":"t1"}`),
			ver("canary", true, `{"tenant":"t1"}`),
		}, map[string]string{"tenant": "t1"}, "v2"},
		{"disabled version skipped", []Version{
			ver("v3", false, `{"tenant":"t1","region":"eu"}`),
			ver("v2", true, `{"tenant":"t1"}`),
		}, map[string]string{"tenant": "t1", "region": "eu"}, "v2"},
		{"only disabled: default", []Version{ver("v2", false, `{"tenant":"t1"}`)}, map[string]string{"tenant": "t1"}, "v1"},
		{"empty rules never selected", []Version{ver("v7", true, `{}`)}, map[string]string{"tenant": "t1"}, "v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := validExt("sel")
			e.Config = json.RawMessage(`{"v":"default"}`)
			e.Versions = tc.versions
			s := mustNew(t, 1, []Extension{e})
			got, _ := s.Get("sel")
			c := got.SelectVersion(tc.attrs)
			if c.Version != tc.want {
				t.Fatalf("SelectVersion(%v) = %s, want %s", tc.attrs, c.Version, tc.want)
			}
			wantSubject, wantConfig := e.Subject, `{"v":"default"}`
			wantTimeout, wantRetry := e.TimeoutMS, e.Retry
			if tc.want != e.Version {
				wantSubject, wantConfig = "ext.sel."+tc.want+".v1", `{"v":"`+tc.want+`"}`
				wantTimeout, wantRetry = 100, 0
			}
			if c.Subject != wantSubject || string(c.Config) != wantConfig || c.TimeoutMS != wantTimeout || c.Retry != wantRetry {
				t.Errorf("choice %+v, want subject %s config %s timeout %d retry %d", c, wantSubject, wantConfig, wantTimeout, wantRetry)
			}
			// An extension that did not go through a snapshot selects the same.
			raw := e
			if c2 := raw.SelectVersion(tc.attrs); c2.Version != tc.want {
				t.Errorf("unnormalized SelectVersion = %s, want %s", c2.Version, tc.want)
			}
		})
	}
}

func TestNewer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"v10", "v9", true}, {"v9", "v10", false}, {"v2", "v2", false}, {"v010", "v9", true},
		{"v01", "v1", false}, {"v1", "v01", true}, {"b", "a", true}, {"v2", "beta", true}, {"beta", "v2", false}, {"v1x", "v10", true},
	} {
		if got := newer(tc.a, tc.b); got != tc.want {
			t.Errorf("newer(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// TestPercentShareAndMonotone: a $percent version serves about that share of 10,000 keys,
// raising the percentage only adds keys, and a disabled extension serves nobody else.
func TestPercentShareAndMonotone(t *testing.T) {
	t.Parallel()
	mk := func(pct string) *Extension {
		e := validExt("pct")
		e.Enabled = false
		v := validVersion(e.Version)
		v.Subject = e.Subject
		v.RoutingRules = json.RawMessage(`{"tenant_id":["vip"],"$percent":"` + pct + `","$percent_key":"user_id"}`)
		e.Versions = []Version{v}
		s, err := New(1, "database", []Extension{e})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := s.Get("pct")
		return got
	}
	prev := map[string]bool{}
	for _, pct := range []string{"0", "5", "25", "50", "100"} {
		e := mk(pct)
		in := map[string]bool{}
		for i := 0; i < 10000; i++ {
			key := "user-" + itoa(int64(i))
			ch, ok := e.Choose(map[string]string{"user_id": key})
			if ok {
				if ch.Match != MatchPercent || ch.Bucket < 0 {
					t.Fatalf("%s%%: %s served by %s (bucket %d), want percent", pct, key, ch.Match, ch.Bucket)
				}
				in[key] = true
			}
		}
		for k := range prev {
			if !in[k] {
				t.Errorf("%s%%: %s was in at the lower percentage and is out now", pct, k)
			}
		}
		bp, _ := rules.ParsePercent(pct)
		if want := bp; abs(len(in)-want) > 150 {
			t.Errorf("%s%%: %d of 10000 keys in, want %d ± 150", pct, len(in), want)
		}
		if ch, ok := e.Choose(map[string]string{"tenant_id": "vip"}); !ok || ch.Match != MatchRules {
			t.Errorf("%s%%: the allow-listed tenant got %+v, %v", pct, ch, ok)
		}
		if _, ok := e.Choose(map[string]string{"tenant_id": "other"}); ok {
			t.Errorf("%s%%: a request without user_id was served by a disabled extension", pct)
		}
		prev = in
	}
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
