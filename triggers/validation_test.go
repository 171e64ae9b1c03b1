package triggers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// row builds an INSERT of one row from valid defaults and the overrides of a case.
type row struct {
	table string
	cols  map[string]any
}

func (r row) with(kv ...any) row {
	cols := make(map[string]any, len(r.cols)+len(kv)/2)
	for k, v := range r.cols {
		cols[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		cols[kv[i].(string)] = kv[i+1]
	}
	return row{table: r.table, cols: cols}
}

// insert renders the INSERT; jsonb columns take text arguments cast in SQL.
func (r row) insert() (string, []any) {
	var names, params []string
	var args []any
	for _, k := range []string{"id", "extension_id", "instance_id", "version", "type", "subject", "timeout_ms",
		"retry", "weight", "health_status", "config", "metadata", "routing_rules"} {
		v, ok := r.cols[k]
		if !ok {
			continue
		}
		args = append(args, v)
		p := fmt.Sprintf("$%d", len(args))
		switch k {
		case "config", "metadata", "routing_rules":
			p += "::jsonb"
		case "timeout_ms", "retry", "weight":
			p += "::int"
		default:
			p += "::text"
		}
		names = append(names, k)
		params = append(params, p)
	}
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", r.table, strings.Join(names, ", "), strings.Join(params, ", ")), args
}

var (
	validExt = row{"extensions", map[string]any{"id": "normalize_text", "type": "pre",
		"subject": "beamline.ext.pre.normalize_text.v1", "timeout_ms": 100, "retry": 0, "version": "v1",
		"config": `{"lang": "en"}`, "metadata": `{"version": "v1"}`}}
	validVer = row{"extension_versions", map[string]any{"id": "base", "version": "v9",
		"subject": "beamline.ext.pre.base.v9", "timeout_ms": 100, "retry": 1, "config": `{}`,
		"metadata": `{}`, "routing_rules": `{"tenant_id": ["t1", "t2"], "environment": "prod"}`}}
	validInst = row{"extension_instances", map[string]any{"extension_id": "base", "instance_id": "i9",
		"subject": "beamline.ext.pre.base.v1", "weight": 50, "health_status": "healthy"}}
)

// TestValidationRefusesInvalidRows: every rule is enforced by the database, and the error
// names the constraint (so the message says which column broke which rule).
func TestValidationRefusesInvalidRows(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 60*time.Second)
	mustExec(t, ctx, s.Pool, `INSERT INTO extensions (id, type, subject) VALUES ('base', 'pre', 'beamline.ext.pre.base.v1')`)
	mustExec(t, ctx, s.Pool, `INSERT INTO extension_versions (id, version, subject) VALUES ('base', 'v1', 'beamline.ext.pre.base.v1')`)
	mustExec(t, ctx, s.Pool, `INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('base', 'i1', 'beamline.ext.pre.base.v1')`)
	before := counter(t, ctx, s.Pool)

	const (
		idRule      = "extensions_id_lowercase_letters_digits_underscore_dash_dot"
		typeRule    = "extensions_type_one_of_pre_validator_post_provider"
		subjRule    = "extensions_subject_nats_subject_ending_vn"
		verSubjRule = "extension_versions_subject_nats_subject_ending_vn"
		rulesRule   = "extension_versions_routing_rules_values_strings_or_arrays"
	)
	long := func(n int) string { return strings.Repeat("a", n) }
	cases := []struct {
		name string
		row  row
		rule string
	}{
		{"id uppercase", validExt.with("id", "Normalize"), idRule},
		{"id space", validExt.with("id", "normalize text"), idRule},
		{"id empty", validExt.with("id", ""), idRule},
		{"id 256 chars", validExt.with("id", long(256)), idRule},
		{"id slash", validExt.with("id", "a/b"), idRule},
		{"type unknown", validExt.with("type", "preprocessor"), typeRule},
		{"type case", validExt.with("type", "PRE"), typeRule},
		{"subject wildcard star", validExt.with("subject", "beamline.ext.pre.*.v1"), subjRule},
		{"subject wildcard gt", validExt.with("subject", "beamline.ext.pre.>"), subjRule},
		{"subject gt inside", validExt.with("subject", "beamline.ext.>.v1"), subjRule},
		{"subject empty token", validExt.with("subject", "beamline..pre.x.v1"), subjRule},
		{"subject leading dot", validExt.with("subject", ".beamline.ext.pre.x.v1"), subjRule},
		{"subject whitespace", validExt.with("subject", "beamline.ext.pre.normalize text.v1"), "extensions_subject_without_whitespace_or_control"},
		{"subject tab", validExt.with("subject", "beamline.ext.pre.x\t.v1"), "extensions_subject_without_whitespace_or_control"},

		// The seven rows PostgreSQL accepted before migration 00005 and the router refused.
		{"subject of 612 bytes in 512 characters", validExt.with("subject", "beamline.ext.pre."+strings.Repeat("é", 296)+".v1"), "extensions_subject_at_most_512_bytes"},
		{"subject with U+0001", validExt.with("subject", "beamline.ext.pre.a\x01b.v1"), "extensions_subject_without_whitespace_or_control"},
		{"subject with U+00A0", validExt.with("subject", "beamline.ext.pre.a\u00a0b.v1"), "extensions_subject_without_whitespace_or_control"},
		{"version of 80 bytes in 40 characters", validExt.with("version", strings.Repeat("é", 40)), "extensions_version_at_most_64_bytes"},
		{"config nested 300 deep", validExt.with("config", strings.Repeat(`{"a":`, 300)+"1"+strings.Repeat("}", 300)), "extensions_config_nesting_at_most_256"},
		{"config number 1e400", validExt.with("config", `{"x": 1e400}`), "extensions_config_numbers_round_trip_doubles"},
		{"instance_id of 400 bytes in 200 characters", validInst.with("instance_id", strings.Repeat("é", 200)), "extension_instances_instance_id_at_most_255_bytes"},
		// And the number that reached routers rounded.
		{"config number 12345678901234567891", validExt.with("config", `{"big": 12345678901234567891}`), "extensions_config_numbers_round_trip_doubles"},
		{"metadata number 1e-400", validExt.with("metadata", `{"tiny": [1e-400]}`), "extensions_metadata_numbers_round_trip_doubles"},
		{"version with a space", validExt.with("version", "v1 beta"), "extensions_version_without_whitespace_or_control"},
		{"version row config too deep", validVer.with("config", `{"a":`+strings.Repeat("[", 256)+strings.Repeat("]", 256)+"}"), "extension_versions_config_nesting_at_most_256"},
		{"version row metadata 0.1000000000000000000001", validVer.with("metadata", `{"x": 0.1000000000000000000001}`), "extension_versions_metadata_numbers_round_trip_doubles"},
		{"instance_id with U+3000", validInst.with("instance_id", "i\u3000"), "extension_instances_instance_id_without_whitespace_or_control"},
		{"subject no version", validExt.with("subject", "beamline.ext.pre.normalize_text"), subjRule},
		{"subject version without number", validExt.with("subject", "beamline.ext.pre.normalize_text.v"), subjRule},
		{"subject version only", validExt.with("subject", "v1"), subjRule},
		{"subject empty", validExt.with("subject", ""), subjRule},
		{"subject 513 chars", validExt.with("subject", long(510)+".v1"), "extensions_subject_at_most_512_bytes"},
		{"timeout 9", validExt.with("timeout_ms", 9), "extensions_timeout_ms_between_10_and_5000"},
		{"timeout 5001", validExt.with("timeout_ms", 5001), "extensions_timeout_ms_between_10_and_5000"},
		{"timeout 0", validExt.with("timeout_ms", 0), "extensions_timeout_ms_between_10_and_5000"},
		{"retry -1", validExt.with("retry", -1), "extensions_retry_between_0_and_3"},
		{"retry 4", validExt.with("retry", 4), "extensions_retry_between_0_and_3"},
		{"version empty", validExt.with("version", ""), "extensions_version_not_empty"},
		{"version 65 chars", validExt.with("version", long(65)), "extensions_version_at_most_64_bytes"},
		{"config array", validExt.with("config", `[1, 2]`), "extensions_config_json_object"},
		{"config string", validExt.with("config", `"text"`), "extensions_config_json_object"},
		{"config null", validExt.with("config", `null`), "extensions_config_json_object"},
		{"metadata array", validExt.with("metadata", `[]`), "extensions_metadata_json_object"},
		{"metadata string", validExt.with("metadata", `"v1"`), "extensions_metadata_json_object"},

		{"version row subject wildcard", validVer.with("subject", "beamline.ext.pre.*.v9"), verSubjRule},
		{"version row subject no version", validVer.with("subject", "beamline.ext.pre.base"), verSubjRule},
		{"version row subject 513 chars", validVer.with("subject", long(510)+".v9"), "extension_versions_subject_at_most_512_bytes"},
		{"version row version empty", validVer.with("version", ""), "extension_versions_version_not_empty"},
		{"version row version 65 chars", validVer.with("version", long(65)), "extension_versions_version_at_most_64_bytes"},
		{"version row timeout 9", validVer.with("timeout_ms", 9), "extension_versions_timeout_ms_between_10_and_5000"},
		{"version row timeout 5001", validVer.with("timeout_ms", 5001), "extension_versions_timeout_ms_between_10_and_5000"},
		{"version row retry -1", validVer.with("retry", -1), "extension_versions_retry_between_0_and_3"},
		{"version row retry 4", validVer.with("retry", 4), "extension_versions_retry_between_0_and_3"},
		{"version row config array", validVer.with("config", `[]`), "extension_versions_config_json_object"},
		{"version row metadata string", validVer.with("metadata", `"x"`), "extension_versions_metadata_json_object"},
		{"routing rule number", validVer.with("routing_rules", `{"tenant_id": 5}`), rulesRule},
		{"routing rule array with number", validVer.with("routing_rules", `{"tenant_id": ["t1", 5]}`), rulesRule},
		{"routing rule object value", validVer.with("routing_rules", `{"tenant_id": {"in": ["t1"]}}`), rulesRule},
		{"routing rule null value", validVer.with("routing_rules", `{"tenant_id": null}`), rulesRule},
		{"routing rules array", validVer.with("routing_rules", `[{"tenant_id": "t1"}]`), rulesRule},
		{"routing rules string", validVer.with("routing_rules", `"t1"`), rulesRule},

		{"instance weight -1", validInst.with("weight", -1), "extension_instances_weight_between_0_and_100"},
		{"instance weight 101", validInst.with("weight", 101), "extension_instances_weight_between_0_and_100"},
		{"instance health bad", validInst.with("health_status", "bad"), "extension_instances_health_healthy_degraded_unhealthy_unknown"},
		{"instance id empty", validInst.with("instance_id", ""), "extension_instances_instance_id_not_empty"},
		{"instance id 256 chars", validInst.with("instance_id", long(256)), "extension_instances_instance_id_at_most_255_bytes"},
		{"instance subject wildcard", validInst.with("subject", "beamline.ext.pre.base.*"), "extension_instances_subject_nats_subject"},
		{"instance subject empty token", validInst.with("subject", "beamline..x"), "extension_instances_subject_nats_subject"},
		{"instance subject 513 chars", validInst.with("subject", long(513)), "extension_instances_subject_at_most_512_bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sql, args := c.row.insert()
			_, err := s.Pool.Exec(ctx, sql, args...)
			if err == nil {
				t.Fatalf("accepted: %s %v", sql, args)
			}
			pe := pgError(t, err)
			if pe.Code != "23514" || pe.ConstraintName != c.rule || !strings.Contains(pe.Message, c.rule) {
				t.Fatalf("got %s (constraint %q, code %s), want check violation of %s", pe.Message, pe.ConstraintName, pe.Code, c.rule)
			}
		})
	}

	// The same rules hold for UPDATE.
	updates := []struct {
		sql, rule string
	}{
		{`UPDATE extensions SET timeout_ms = 9 WHERE id = 'base'`, "extensions_timeout_ms_between_10_and_5000"},
		{`UPDATE extensions SET subject = 'beamline.ext.pre.base' WHERE id = 'base'`, subjRule},
		{`UPDATE extensions SET config = '[]' WHERE id = 'base'`, "extensions_config_json_object"},
		{`UPDATE extension_versions SET routing_rules = '{"tenant_id": [1]}' WHERE id = 'base'`, rulesRule},
		{`UPDATE extension_instances SET weight = 101 WHERE extension_id = 'base'`, "extension_instances_weight_between_0_and_100"},
	}
	for _, u := range updates {
		t.Run(u.sql, func(t *testing.T) {
			t.Parallel()
			_, err := s.Pool.Exec(ctx, u.sql)
			if pe := pgError(t, err); pe.ConstraintName != u.rule || !strings.Contains(pe.Message, u.rule) {
				t.Fatalf("got %s (constraint %q), want %s", pe.Message, pe.ConstraintName, u.rule)
			}
		})
	}

	// Keys cannot change: delete and insert instead.
	keys := []struct{ sql, want string }{
		{`UPDATE extensions SET id = 'renamed' WHERE id = 'base'`, "extensions.id cannot be changed (base -> renamed)"},
		{`UPDATE extension_versions SET version = 'v2' WHERE id = 'base'`, "extension_versions.(id, version) cannot be changed (base/v1 -> base/v2)"},
		{`UPDATE extension_instances SET instance_id = 'i2' WHERE extension_id = 'base'`, "extension_instances.(extension_id, instance_id) cannot be changed (base/i1 -> base/i2)"},
	}
	for _, k := range keys {
		t.Run(k.sql, func(t *testing.T) {
			t.Parallel()
			_, err := s.Pool.Exec(ctx, k.sql)
			if pe := pgError(t, err); pe.Code != "23514" || !strings.Contains(pe.Message, k.want) || !strings.Contains(pe.Message, "delete") {
				t.Fatalf("got %v, want a check violation saying %q and to delete and insert", err, k.want)
			}
		})
	}

	t.Cleanup(func() {
		if got := counter(t, context.Background(), s.Pool); got != before {
			t.Errorf("refused writes moved the counter from %d to %d", before, got)
		}
	})
}

// TestValidationAcceptsBoundaries: the limits themselves are valid values.
func TestValidationAcceptsBoundaries(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	mustExec(t, ctx, s.Pool, `INSERT INTO extensions (id, type, subject) VALUES ('base', 'pre', 'beamline.ext.pre.base.v1')`)

	long := func(n int) string { return strings.Repeat("a", n) }
	cases := []struct {
		name string
		row  row
	}{
		{"timeout 10", validExt.with("id", "t10", "timeout_ms", 10)},
		{"timeout 5000", validExt.with("id", "t5000", "timeout_ms", 5000)},
		{"retry 0", validExt.with("id", "r0", "retry", 0)},
		{"retry 3", validExt.with("id", "r3", "retry", 3)},
		{"id 255 chars", validExt.with("id", long(255))},
		{"id all allowed characters", validExt.with("id", "a-z_0.9")},
		{"subject 512 chars", validExt.with("id", "s512", "subject", long(509)+".v1")},
		{"subject provider", validExt.with("id", "prov", "type", "provider", "subject", "beamline.provider.test_provider.v12")},
		{"version 64 chars", validExt.with("id", "v64", "version", long(64))},
		{"types validator", validExt.with("id", "tv", "type", "validator")},
		{"types post", validExt.with("id", "tp", "type", "post")},
		{"version row boundaries", validVer.with("version", "v10", "timeout_ms", 10, "retry", 3)},
		{"version row 5000", validVer.with("version", "v11", "timeout_ms", 5000, "retry", 0)},
		{"routing rules empty", validVer.with("version", "v12", "routing_rules", `{}`)},
		{"routing rules string", validVer.with("version", "v13", "routing_rules", `{"policy_id": "p1"}`)},
		{"weight 0", validInst.with("instance_id", "w0", "weight", 0)},
		{"weight 100", validInst.with("instance_id", "w100", "weight", 100)},
		{"health degraded", validInst.with("instance_id", "hd", "health_status", "degraded")},
		{"health unhealthy", validInst.with("instance_id", "hu", "health_status", "unhealthy")},
		{"health unknown", validInst.with("instance_id", "hk", "health_status", "unknown")},
		{"instance subject without version", validInst.with("instance_id", "nv", "subject", "beamline.ext.pre.base.node1")},
		{"subject of 512 bytes in multibyte characters", validExt.with("id", "mb", "subject", "beamline.ext.pre."+strings.Repeat("é", 246)+".v1")},
		{"subject with non-ASCII letters", validExt.with("id", "na", "subject", "beamline.ext.pre.größe.v1")},
		{"version of 64 bytes in 32 characters", validExt.with("id", "v32", "version", strings.Repeat("é", 32))},
		{"instance_id of 255 bytes", validInst.with("instance_id", strings.Repeat("é", 127)+"a")},
		{"config nested 256 deep", validExt.with("id", "deep", "config", strings.Repeat(`{"a":`, 255)+"[]"+strings.Repeat("}", 255))},
		{"config numbers that round-trip", validExt.with("id", "num", "config", `{"a": 0.1, "b": 1.0, "c": 1e2, "d": -0, "e": 9007199254740992, "f": 1.7976931348623157e308, "g": 5e-324, "h": 12345678901234567000, "i": [0.30000000000000004]}`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sql, args := c.row.insert()
			if _, err := s.Pool.Exec(ctx, sql, args...); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}
