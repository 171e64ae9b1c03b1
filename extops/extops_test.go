package extops

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/cache"
)

func base() *cache.Extension {
	return &cache.Extension{ID: "x", Type: "pre", Subject: "beamline.ext.pre.x.v1", TimeoutMS: 100, Version: "v1",
		Config: json.RawMessage(`{"a":1}`), Metadata: json.RawMessage(`{}`)}
}

func TestRolloutOps(t *testing.T) {
	t.Parallel()
	p25, p50 := "25", "50"
	e, err := DoRollout(Rollout{Match: map[string][]string{"tenant_id": {"staging"}}})(base())
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Versions) != 1 || e.Versions[0].Subject != e.Subject || string(e.Versions[0].Config) != `{"a":1}` || !e.Versions[0].Enabled {
		t.Fatalf("the rollout row does not repeat the definition: %+v", e.Versions)
	}
	e, err = DoRollout(Rollout{Percent: &p25, PercentKey: "tenant_id"})(e)
	if err != nil {
		t.Fatal(err)
	}
	e, err = DoRollout(Rollout{Percent: &p50})(e)
	if err != nil {
		t.Fatal(err)
	}
	if got := DescribeRules(e.Versions[0].RoutingRules); got != "tenant_id in [staging], or 50% of tenant_id" {
		t.Errorf("rules: %s", got)
	}
	normalize(e)
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := State(e); !strings.HasPrefix(got, "off except its rollout: v1:") {
		t.Errorf("state %q", got)
	}
	e2, err := DoRollout(Rollout{Version: "v2", Match: map[string][]string{"tenant_id": {"t1"}}})(e)
	if err != nil || e2.Versions[1].Subject != "beamline.ext.pre.x.v2" {
		t.Fatalf("v2 subject not derived: %v %+v", err, e2.Versions)
	}
	for _, tc := range []struct {
		r    Rollout
		want string
	}{
		{Rollout{Version: "canary", Match: map[string][]string{"k": {"v"}}}, "give its --subject"},
		{Rollout{Percent: &p25}, "give --key"},
		{Rollout{PercentKey: "user_id"}, "without --percent"},
		{Rollout{Match: map[string][]string{"$percent": {"5"}}}, "reserved"},
	} {
		if _, err := DoRollout(tc.r)(base()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %q", tc.r, err, tc.want)
		}
	}
	k, err := SetKill(true)(base())
	if err != nil || !Killed(k) || !strings.HasPrefix(State(k), "killed") {
		t.Fatalf("kill: %v %s", err, k.Metadata)
	}
	if k, _ = SetKill(false)(k); Killed(k) || string(k.Metadata) != `{}` {
		t.Errorf("unkill left %s", k.Metadata)
	}
	if _, err := SetFields([]string{"timeout=5"})(base()); err == nil || !strings.Contains(err.Error(), `unknown field "timeout"`) {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := SetEnabled(true)(nil); err == nil || !strings.Contains(err.Error(), "no such extension") {
		t.Errorf("missing extension: %v", err)
	}
}
