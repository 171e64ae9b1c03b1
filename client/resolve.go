package client

// Plan is what Invoke would do for one request, without calling anything.
type Plan struct {
	Extension string `json:"extension"`
	Type      string `json:"type"`
	Version   string `json:"version"`
	// Match says why the version was selected: "routing_rules", "percent"
	// or "default" (cache.VersionChoice.Match); Bucket is the request's
	// percentage bucket (0..9999) when Match is "percent", else -1.
	Match  string `json:"match"`
	Bucket int    `json:"bucket"`
	// VersionSubject is the selected version's subject.
	VersionSubject string `json:"version_subject"`
	// Subject is the subject Invoke would call now (the chosen instance's, or
	// the version's); Target is the instance id, or the subject when the
	// extension has no instance.
	Subject   string `json:"subject"`
	Target    string `json:"target"`
	TimeoutMS int    `json:"timeout_ms"`
	Retry     int    `json:"retry"`
	// StickyKey is the key the target was chosen by ("" for a weighted draw:
	// another call may go elsewhere, see Instances).
	StickyKey string `json:"sticky_key,omitempty"`
	// Instances lists the extension's instances with their share of traffic
	// (0..1); empty when the version's subject is called.
	Instances        []PlanInstance `json:"instances"`
	Breaker          BreakerConfig  `json:"breaker"`
	BreakerState     string         `json:"breaker_state"` // of the target; "closed" before its first call
	MaxPayloadBytes  int            `json:"max_payload_bytes"`
	MaxMetadataBytes int            `json:"max_metadata_bytes"`
	// Problems lists the metadata fields that were ignored.
	Problems []string `json:"problems,omitempty"`
}

// PlanInstance is one instance of a Plan.
type PlanInstance struct {
	InstanceID   string  `json:"instance_id"`
	Subject      string  `json:"subject"`
	Weight       int     `json:"weight"`
	Enabled      bool    `json:"enabled"`
	HealthStatus string  `json:"health_status"`
	Usable       bool    `json:"usable"`
	Share        float64 `json:"share"`
	BreakerState string  `json:"breaker_state"`
}

// Resolve returns what Invoke would call for a request with these attributes
// and sticky key (which may be empty), without calling it. Its error is the
// *InvokeError Invoke would return before calling (extension_not_found,
// extension_unavailable for no usable instance); the Plan is filled as far as
// it goes (nil for extension_not_found).
func (c *Client) Resolve(id string, attrs map[string]string, stickyKey string) (*Plan, error) {
	inv := c.invokerOf()
	e, p, ierr := inv.lookup(id)
	if ierr != nil {
		return nil, ierr
	}
	r, ierr := inv.route(e, p, &Request{StickyKey: stickyKey}, attrs)
	if ierr != nil && ierr.Code == CodeExtensionNotFound {
		return nil, ierr
	}
	plan := &Plan{Extension: id, Type: e.Type, Version: r.choice.Version, Match: r.choice.Match, Bucket: r.choice.Bucket,
		VersionSubject: r.choice.Subject, Subject: r.subject, Target: r.target,
		TimeoutMS: r.choice.TimeoutMS, Retry: r.choice.Retry, StickyKey: r.stickKey, Instances: []PlanInstance{},
		Breaker: p.breaker, BreakerState: inv.breakerState(id, r.target),
		MaxPayloadBytes: p.maxPayload, MaxMetadataBytes: p.maxMetadata, Problems: p.problems}
	if r.choice.Version == e.Version {
		total, _, _ := instanceWeights(e.Instances)
		sum := 0
		for i := range e.Instances {
			sum += effectiveWeight(&e.Instances[i], total)
		}
		for i := range e.Instances {
			in := &e.Instances[i]
			pi := PlanInstance{InstanceID: in.InstanceID, Subject: in.Subject, Weight: in.Weight, Enabled: in.Enabled,
				HealthStatus: in.HealthStatus, Usable: usableInstance(in), BreakerState: inv.breakerState(id, in.InstanceID)}
			if sum > 0 {
				pi.Share = float64(effectiveWeight(in, total)) / float64(sum)
			}
			plan.Instances = append(plan.Instances, pi)
		}
	}
	if ierr != nil {
		plan.Target = ""
		return plan, ierr
	}
	return plan, nil
}

func (inv *invoker) breakerState(ext, target string) string {
	if b := inv.breakers.peek(ext, target); b != nil {
		return stateName(b.cb.State())
	}
	return BreakerClosed
}
