package rules_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/fixtures"
	"github.com/beamline/registry-syncer/rules"
	"github.com/beamline/registry-syncer/rules/schemacheck"
	"github.com/beamline/registry-syncer/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.MainPostgres(m, harness.PGOptions{})) }

// row is one generated aggregate: an extension with one version and one instance, every
// field valid unless a case changed it.
type row struct {
	ext  cache.Extension
	ver  cache.Version
	inst cache.Instance
}

func validRow() row {
	return row{
		ext: cache.Extension{ID: "agg", Type: "pre", Subject: "beamline.ext.pre.agg.v1", TimeoutMS: 100, Retry: 1,
			Enabled: true, Version: "v1", Config: json.RawMessage(`{"lang":"en"}`), Metadata: json.RawMessage(`{"owner":"team"}`)},
		ver: cache.Version{Version: "v2", Subject: "beamline.ext.pre.agg.v2", TimeoutMS: 200, Retry: 0, Enabled: true,
			Config: json.RawMessage(`{}`), Metadata: json.RawMessage(`{}`), RoutingRules: json.RawMessage(`{"tenant_id":["t1","t2"]}`)},
		inst: cache.Instance{InstanceID: "i1", Subject: "beamline.ext.pre.agg.v1.i1", Weight: 50, Enabled: true, HealthStatus: "healthy"},
	}
}

// gateCase is a row and the rule it breaks ("" when valid): table and column name the
// field the rule is about.
type gateCase struct {
	name          string
	table, column string
	rule          string
	mod           func(r *row)
	// dbCode is the SQLSTATE the database refuses with when a type, not a constraint,
	// enforces the rule (U+0000 in jsonb).
	dbCode string
}

func cases() []gateCase {
	é := func(n int) string { return strings.Repeat("é", n) }
	deep := func(n int) string { return strings.Repeat(`{"a":`, n-1) + "[]" + strings.Repeat("}", n-1) }
	ext := func(name, column, rule string, mod func(e *cache.Extension)) gateCase {
		return gateCase{name: name, table: "extensions", column: column, rule: rule, mod: func(r *row) { mod(&r.ext) }}
	}
	ver := func(name, column, rule string, mod func(v *cache.Version)) gateCase {
		return gateCase{name: "version row " + name, table: "extension_versions", column: column, rule: rule, mod: func(r *row) { mod(&r.ver) }}
	}
	inst := func(name, column, rule string, mod func(i *cache.Instance)) gateCase {
		return gateCase{name: "instance " + name, table: "extension_instances", column: column, rule: rule, mod: func(r *row) { mod(&r.inst) }}
	}
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	b512 := rules.RuleMaxBytes(512)
	return []gateCase{
		// Valid rows, at the limits.
		ext("valid", "", "", func(e *cache.Extension) {}),
		ext("subject of 512 bytes of multibyte characters", "", "", func(e *cache.Extension) { e.Subject = "beamline.ext.pre." + é(246) + ".v1" }),
		ext("subject with letters beyond ASCII", "", "", func(e *cache.Extension) { e.Subject = "beamline.ext.pre.größe_π.v1" }),
		ext("version of 64 bytes", "", "", func(e *cache.Extension) { e.Version = é(32) }),
		ext("version with punctuation", "", "", func(e *cache.Extension) { e.Version = `2024-01_rc.1+"x"\` }),
		ext("id of 255 bytes", "", "", func(e *cache.Extension) { e.ID = strings.Repeat("a", 255) }),
		ext("timeout and retry at the limits", "", "", func(e *cache.Extension) { e.TimeoutMS, e.Retry = 5000, 3 }),
		ext("config nested 256 deep", "", "", func(e *cache.Extension) { e.Config = raw(deep(256)) }),
		ext("config numbers that round-trip", "", "", func(e *cache.Extension) {
			e.Config = raw(`{"a":0.1,"b":1.0,"c":1e2,"d":-0,"e":9007199254740992,"f":1.7976931348623157e308,"g":5e-324,"h":12345678901234567000,"i":[0.30000000000000004,-1.5e-7]}`)
		}),
		ext("config strings with escapes", "", "", func(e *cache.Extension) { e.Config = raw(`{"s":"\u0001\n\"\\é😀","":{}}`) }),
		inst("id of 255 bytes", "", "", func(i *cache.Instance) { i.InstanceID = é(127) + "a" }),
		inst("subject without version", "", "", func(i *cache.Instance) { i.Subject = "beamline.ext.pre.agg.node-1" }),
		ver("routing rules empty", "", "", func(v *cache.Version) { v.RoutingRules = raw(`{}`) }),
		ver("routing rules with a percentage", "", "", func(v *cache.Version) {
			v.RoutingRules = raw(`{"tenant_id":["t1"],"$percent":"12.5","$percent_key":"user_id"}`)
		}),
		ver("routing rules at 100.00 percent", "", "", func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"100.00","$percent_key":"k"}`) }),
		ver("routing rules at 0 percent", "", "", func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"0","$percent_key":"k"}`) }),

		// The seven rows PostgreSQL accepted and the router refused before migration 00005.
		ext("subject of 612 bytes in 512 characters", "subject", b512, func(e *cache.Extension) { e.Subject = "beamline.ext.pre." + é(296) + ".v1" }),
		ext("subject with U+0001", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a\x01b.v1" }),
		ext("subject with U+00A0", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a\u00a0b.v1" }),
		ext("version of 80 bytes in 40 characters", "version", rules.RuleMaxBytes(64), func(e *cache.Extension) { e.Version = é(40) }),
		ext("config nested 300 deep", "config", rules.RuleNesting, func(e *cache.Extension) { e.Config = raw(deep(300)) }),
		ext("config number 1e400", "config", rules.RuleNumbers, func(e *cache.Extension) { e.Config = raw(`{"x":1e400}`) }),
		inst("id of 400 bytes in 200 characters", "instance_id", rules.RuleMaxBytes(255), func(i *cache.Instance) { i.InstanceID = é(200) }),
		// The number that reached routers rounded.
		ext("config number 12345678901234567891", "config", rules.RuleNumbers, func(e *cache.Extension) { e.Config = raw(`{"big":12345678901234567891}`) }),

		// Every other rule.
		ext("id uppercase", "id", rules.RuleID, func(e *cache.Extension) { e.ID = "Agg" }),
		ext("id empty", "id", rules.RuleID, func(e *cache.Extension) { e.ID = "" }),
		ext("id of 256 bytes", "id", rules.RuleID, func(e *cache.Extension) { e.ID = strings.Repeat("a", 256) }),
		ext("id with a slash", "id", rules.RuleID, func(e *cache.Extension) { e.ID = "a/b" }),
		ext("type unknown", "type", rules.RuleType, func(e *cache.Extension) { e.Type = "middle" }),
		ext("subject of 513 ASCII bytes", "subject", b512, func(e *cache.Extension) { e.Subject = strings.Repeat("a", 510) + ".v1" }),
		ext("subject with a space", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a b.v1" }),
		ext("subject with U+3000", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a\u3000.v1" }),
		ext("subject with U+2028", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a\u2028.v1" }),
		ext("subject with U+0085", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a\u0085.v1" }),
		ext("subject with DEL", "subject", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a\x7f.v1" }),
		ext("subject wildcard", "subject", rules.RuleSubjectVN, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.*.v1" }),
		ext("subject empty token", "subject", rules.RuleSubjectVN, func(e *cache.Extension) { e.Subject = "beamline..pre.a.v1" }),
		ext("subject without version", "subject", rules.RuleSubjectVN, func(e *cache.Extension) { e.Subject = "beamline.ext.pre.a" }),
		ext("subject empty", "subject", rules.RuleSubjectVN, func(e *cache.Extension) { e.Subject = "" }),
		ext("timeout 9", "timeout_ms", rules.RuleTimeout, func(e *cache.Extension) { e.TimeoutMS = 9 }),
		ext("timeout 5001", "timeout_ms", rules.RuleTimeout, func(e *cache.Extension) { e.TimeoutMS = 5001 }),
		ext("retry -1", "retry", rules.RuleRetry, func(e *cache.Extension) { e.Retry = -1 }),
		ext("retry 4", "retry", rules.RuleRetry, func(e *cache.Extension) { e.Retry = 4 }),
		ext("version empty", "version", rules.RuleNotEmpty, func(e *cache.Extension) { e.Version = "" }),
		ext("version with a space", "version", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Version = "v1 beta" }),
		ext("version with U+0085", "version", rules.RuleNoSpaceControl, func(e *cache.Extension) { e.Version = "v1\u0085" }),
		ext("config an array", "config", rules.RuleObject, func(e *cache.Extension) { e.Config = raw(`[1]`) }),
		ext("config number 1e-400", "config", rules.RuleNumbers, func(e *cache.Extension) { e.Config = raw(`{"x":[1e-400]}`) }),
		ext("config number 0.1000000000000000000001", "config", rules.RuleNumbers, func(e *cache.Extension) { e.Config = raw(`{"x":0.1000000000000000000001}`) }),
		ext("config number 9007199254740993", "config", rules.RuleNumbers, func(e *cache.Extension) { e.Config = raw(`{"x":9007199254740993}`) }),
		{name: "config with U+0000", table: "extensions", column: "config", rule: rules.RuleNoNUL, dbCode: "22P05",
			mod: func(r *row) { r.ext.Config = raw(`{"x":"a\u0000"}`) }},
		ext("metadata nested 257 deep", "metadata", rules.RuleNesting, func(e *cache.Extension) { e.Metadata = raw(deep(257)) }),
		ext("metadata number -1e309", "metadata", rules.RuleNumbers, func(e *cache.Extension) { e.Metadata = raw(`{"x":-1e309}`) }),
		ext("metadata a string", "metadata", rules.RuleObject, func(e *cache.Extension) { e.Metadata = raw(`"v1"`) }),

		ver("version of 80 bytes", "version", rules.RuleMaxBytes(64), func(v *cache.Version) { v.Version = é(40) }),
		ver("version with a tab", "version", rules.RuleNoSpaceControl, func(v *cache.Version) { v.Version = "v2\t" }),
		ver("subject of 612 bytes", "subject", b512, func(v *cache.Version) { v.Subject = "beamline.ext.pre." + é(296) + ".v2" }),
		ver("subject with U+00A0", "subject", rules.RuleNoSpaceControl, func(v *cache.Version) { v.Subject = "beamline.ext.pre.\u00a0.v2" }),
		ver("subject without version", "subject", rules.RuleSubjectVN, func(v *cache.Version) { v.Subject = "beamline.ext.pre.agg" }),
		ver("timeout 5001", "timeout_ms", rules.RuleTimeout, func(v *cache.Version) { v.TimeoutMS = 5001 }),
		ver("retry 4", "retry", rules.RuleRetry, func(v *cache.Version) { v.Retry = 4 }),
		ver("config nested 300 deep", "config", rules.RuleNesting, func(v *cache.Version) { v.Config = raw(deep(300)) }),
		ver("config number 1e400", "config", rules.RuleNumbers, func(v *cache.Version) { v.Config = raw(`{"x":1e400}`) }),
		ver("metadata number 12345678901234567891", "metadata", rules.RuleNumbers, func(v *cache.Version) { v.Metadata = raw(`{"x":12345678901234567891}`) }),
		ver("routing rule a number", "routing_rules", rules.RuleRoutingRules, func(v *cache.Version) { v.RoutingRules = raw(`{"tenant_id":5}`) }),
		ver("routing rule $percent without $percent_key", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"25"}`) }),
		ver("routing rule $percent_key without $percent", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent_key":"tenant_id"}`) }),
		ver("routing rule $percent 101", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"101","$percent_key":"k"}`) }),
		ver("routing rule $percent 100.5", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"100.5","$percent_key":"k"}`) }),
		ver("routing rule $percent with 3 decimals", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"2.555","$percent_key":"k"}`) }),
		ver("routing rule $percent 1e1", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"1e1","$percent_key":"k"}`) }),
		ver("routing rule $percent negative", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"-1","$percent_key":"k"}`) }),
		ver("routing rule $percent an array", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":["5"],"$percent_key":"k"}`) }),
		ver("routing rule $percent_key empty", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"5","$percent_key":""}`) }),
		ver("routing rule $percent_key reserved", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"5","$percent_key":"$x"}`) }),
		ver("routing rule $percent_key an array", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$percent":"5","$percent_key":["k"]}`) }),
		ver("routing rule unknown reserved key", "routing_rules", rules.RuleRollout, func(v *cache.Version) { v.RoutingRules = raw(`{"$tenant":"t1"}`) }),

		inst("id empty", "instance_id", rules.RuleNotEmpty, func(i *cache.Instance) { i.InstanceID = "" }),
		inst("id with U+00A0", "instance_id", rules.RuleNoSpaceControl, func(i *cache.Instance) { i.InstanceID = "i\u00a01" }),
		inst("id with a newline", "instance_id", rules.RuleNoSpaceControl, func(i *cache.Instance) { i.InstanceID = "i\n1" }),
		inst("subject of 513 bytes", "subject", b512, func(i *cache.Instance) { i.Subject = strings.Repeat("a", 513) }),
		inst("subject with U+1680", "subject", rules.RuleNoSpaceControl, func(i *cache.Instance) { i.Subject = "a.\u1680" }),
		inst("subject wildcard", "subject", rules.RuleSubject, func(i *cache.Instance) { i.Subject = "a.>" }),
		inst("weight 101", "weight", rules.RuleWeight, func(i *cache.Instance) { i.Weight = 101 }),
		inst("health unknown value", "health_status", rules.RuleHealth, func(i *cache.Instance) { i.HealthStatus = "bad" }),
	}
}

func (c gateCase) row() row {
	r := validRow()
	c.mod(&r)
	return r
}

func (c gateCase) constraint() string {
	col, ok := rules.Find(c.table, c.column)
	if !ok {
		panic("no column " + c.table + "." + c.column)
	}
	for _, r := range col.Rules {
		if r.Name == c.rule {
			return col.Constraint(r)
		}
	}
	panic("no rule " + c.rule + " on " + c.table + "." + c.column)
}

// TestEveryGateAgrees pushes the same rows, valid and invalid in each rule, through every
// gate: an INSERT into PostgreSQL, the fixture loader (for what a fixture file can hold:
// an extension's own fields), cache.Extension.Validate and cache.New, and the JSON Schemas
// (aggregate and fixture file). Each gate must accept exactly the valid rows and refuse
// each invalid one naming the same field and rule.
func TestEveryGateAgrees(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	aggSchema := compile(t, rules.AggregateSchemaFile)
	fixSchema := compile(t, rules.FixtureSchemaFile)
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := c.row()
			t.Run("database", func(t *testing.T) { checkDatabase(t, s.Pool, c, r) })
			t.Run("cache", func(t *testing.T) { checkCache(t, c, r) })
			t.Run("aggregate schema", func(t *testing.T) { checkSchema(t, aggSchema, c, aggregateJSON(t, r), c.schemaField("/")) })
			if c.table == "extensions" || c.rule == "" {
				t.Run("fixtures", func(t *testing.T) { checkFixtures(t, c, r) })
				t.Run("fixture schema", func(t *testing.T) {
					field := c.column
					if field == "version" {
						field = "metadata/version"
					}
					checkSchema(t, fixSchema, c, fixtureJSON(t, r), field)
				})
			}
		})
	}
}

func compile(t *testing.T, file string) *schemacheck.Schema {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", file))
	if err != nil {
		t.Fatal(err)
	}
	s, err := schemacheck.Compile(file, doc)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkDatabase(t *testing.T, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, c gateCase, r row) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	e, v, in := r.ext, r.ver, r.inst
	_, err = tx.Exec(ctx, `INSERT INTO extensions (id, type, subject, timeout_ms, retry, enabled, version, config, metadata)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9::text::jsonb)`,
		e.ID, e.Type, e.Subject, e.TimeoutMS, e.Retry, e.Enabled, e.Version, string(e.Config), string(e.Metadata))
	if err == nil {
		_, err = tx.Exec(ctx, `INSERT INTO extension_versions (id, version, subject, timeout_ms, retry, enabled, config, metadata, routing_rules)
			VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9::text::jsonb)`,
			e.ID, v.Version, v.Subject, v.TimeoutMS, v.Retry, v.Enabled, string(v.Config), string(v.Metadata), string(v.RoutingRules))
	}
	if err == nil {
		_, err = tx.Exec(ctx, `INSERT INTO extension_instances (extension_id, instance_id, subject, weight, enabled, health_status)
			VALUES ($1, $2, $3, $4, $5, $6)`, e.ID, in.InstanceID, in.Subject, in.Weight, in.Enabled, in.HealthStatus)
	}
	if c.rule == "" {
		if err != nil {
			t.Fatalf("refused a valid row: %v", err)
		}
		return
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want a refusal, got %v", err)
	}
	if c.dbCode != "" {
		if pe.Code != c.dbCode {
			t.Fatalf("got %s (%s), want SQLSTATE %s", pe.Message, pe.Code, c.dbCode)
		}
		return
	}
	if want := c.constraint(); pe.Code != "23514" || pe.ConstraintName != want || !strings.Contains(pe.Message, want) {
		t.Fatalf("got %q (constraint %q, SQLSTATE %s), want a check violation of %s", pe.Message, pe.ConstraintName, pe.Code, want)
	}
}

func (c gateCase) cacheField() string {
	switch c.table {
	case "extension_versions":
		return "versions["
	case "extension_instances":
		return "instances["
	}
	return ""
}

func (c gateCase) schemaField(sep string) string {
	switch c.table {
	case "extension_versions":
		return "versions" + sep + "0" + sep + c.column
	case "extension_instances":
		return "instances" + sep + "0" + sep + c.column
	}
	return c.column
}

func checkCache(t *testing.T, c gateCase, r row) {
	e := r.ext
	e.Versions = []cache.Version{r.ver}
	e.Instances = []cache.Instance{r.inst}
	err := e.Validate()
	_, newErr := cache.New(1, "test", []cache.Extension{e})
	if (err == nil) != (newErr == nil) {
		t.Fatalf("Validate says %v, New says %v", err, newErr)
	}
	if c.rule == "" {
		if err != nil {
			t.Fatalf("refused a valid row: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatal("accepted")
	}
	var all []string
	for _, one := range unjoin(err) {
		var ve *cache.ValidationError
		if errors.As(one, &ve) {
			if ve.Name == c.rule && strings.HasPrefix(ve.Field, c.cacheField()) && strings.HasSuffix(ve.Field, c.column) {
				return
			}
			all = append(all, fmt.Sprintf("%s: %s (rule %s)", ve.Field, ve.Rule, ve.Name))
		}
	}
	t.Fatalf("got %q, want %s… %s refused by rule %s", all, c.cacheField(), c.column, c.rule)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func aggregateJSON(t *testing.T, r row) []byte {
	e := r.ext
	e.Versions = []cache.Version{r.ver}
	e.Instances = []cache.Instance{r.inst}
	b, err := json.Marshal(e)
	if err != nil {
		// json.Marshal checks raw fields: an invalid one (1e400 is valid JSON) never occurs here.
		t.Fatal(err)
	}
	return b
}

func fixtureJSON(t *testing.T, r row) []byte {
	e := r.ext
	meta := string(e.Metadata)
	if strings.HasPrefix(meta, "{") && !strings.Contains(meta, `"version"`) {
		v, _ := json.Marshal(e.Version)
		if meta == "{}" {
			meta = `{"version":` + string(v) + `}`
		} else {
			meta = `{"version":` + string(v) + `,` + meta[1:]
		}
	}
	id, _ := json.Marshal(e.ID)
	typ, _ := json.Marshal(e.Type)
	subj, _ := json.Marshal(e.Subject)
	return fmt.Appendf(nil, `{"id":%s,"type":%s,"subject":%s,"timeout_ms":%d,"retry":%d,"enabled":%t,"config":%s,"metadata":%s}`,
		id, typ, subj, e.TimeoutMS, e.Retry, e.Enabled, e.Config, meta)
}

func checkFixtures(t *testing.T, c gateCase, r row) {
	doc := fixtureJSON(t, r)
	recs, err := fixtures.Load(fstest.MapFS{"x.json": {Data: doc}})
	if c.rule == "" {
		if err != nil {
			t.Fatalf("refused a valid row: %v", err)
		}
		if len(recs) != 1 || recs[0].Version != r.ext.Version {
			t.Fatalf("loaded %+v", recs)
		}
		return
	}
	if err == nil {
		t.Fatal("accepted")
	}
	field := c.column
	if field == "version" {
		field = "metadata.version"
	}
	var all []string
	for _, one := range unjoin(err) {
		var p *fixtures.Problem
		if errors.As(one, &p) {
			if p.Rule == c.rule && p.Field == field {
				return
			}
			all = append(all, fmt.Sprintf("%s: %s (rule %s)", p.Field, p.Msg, p.Rule))
		}
	}
	t.Fatalf("got %q, want %s refused by rule %s", all, field, c.rule)
}

func checkSchema(t *testing.T, s *schemacheck.Schema, c gateCase, doc []byte, field string) {
	fails, err := s.Validate(doc)
	if err != nil {
		t.Fatal(err)
	}
	if c.rule == "" {
		if len(fails) > 0 {
			t.Fatalf("refused a valid row: %v", fails)
		}
		return
	}
	for _, f := range fails {
		if f.Rule == c.rule && (f.Field == field || strings.HasPrefix(f.Field, field+"/")) {
			return
		}
	}
	t.Fatalf("got %v, want %s refused by rule %s", fails, field, c.rule)
}
