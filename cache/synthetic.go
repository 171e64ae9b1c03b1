package cache

import (
	"encoding/json"
	"strconv"
)

// Synthetic returns n deterministic, valid extensions for tests and
// benchmarks: ids "ext.000000", "ext.000001", … (ascending up to a million
// extensions), types cycling
// through pre, validator, post and provider, every tenth extension disabled,
// every third with two versions (v1 without routing rules, v2 routed to
// tenants t1 and t2) and every fourth with two instances. The result is
// freshly allocated on each call.
func Synthetic(n int) []Extension {
	types := [numTypes]string{TypePre, TypeValidator, TypePost, TypeProvider}
	exts := make([]Extension, n)
	for i := range exts {
		num := strconv.Itoa(i)
		pad := "000000"[min(len(num), 6):] + num
		id := "ext." + pad
		typ := types[i%numTypes]
		base := "ext." + typ + "." + pad
		e := Extension{
			ID:        id,
			Type:      typ,
			Subject:   base + ".v1",
			TimeoutMS: 50 + (i*37)%4900,
			Retry:     i % 4,
			Enabled:   i%10 != 9,
			Version:   "v1",
			Config:    json.RawMessage(`{"limit":` + num + `,"mode":"strict","ratio":0.25}`),
			Metadata:  json.RawMessage(`{"owner":"team-` + strconv.Itoa(i%17) + `"}`),
			Versions:  []Version{},
			Instances: []Instance{},
		}
		if i%3 == 0 {
			e.Versions = []Version{
				{Version: "v1", Subject: base + ".v1", TimeoutMS: e.TimeoutMS, Retry: e.Retry, Enabled: true,
					Config: e.Config, Metadata: json.RawMessage(`{}`), RoutingRules: json.RawMessage(`{}`)},
				{Version: "v2", Subject: base + ".v2", TimeoutMS: 100, Retry: 1, Enabled: true,
					Config: json.RawMessage(`{"limit":` + num + `,"mode":"lenient"}`), Metadata: json.RawMessage(`{"canary":true}`),
					RoutingRules: json.RawMessage(`{"tenant":["t1","t2"]}`)},
			}
		}
		if i%4 == 0 {
			e.Instances = []Instance{
				{InstanceID: "a-" + pad, Subject: base + ".v1.a", Weight: 60, Enabled: true, HealthStatus: HealthHealthy},
				{InstanceID: "b-" + pad, Subject: base + ".v1.b", Weight: 40, Enabled: i%8 == 0, HealthStatus: HealthDegraded},
			}
		}
		exts[i] = e
	}
	return exts
}
