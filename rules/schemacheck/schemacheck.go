// Package schemacheck validates documents against the registry's JSON Schemas with the
// keywords of rules.VocabularyURL (maxBytes, maxNesting, roundTripNumbers, noNUL), and
// names the rule each failure breaks. Tests use it as the JSON Schema gate.
package schemacheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/message"

	"github.com/beamline/registry-syncer/rules"
)

// Failure is one broken rule found by a schema.
type Failure struct {
	Field   string // the instance location, e.g. "subject" or "versions/0/config"
	Keyword string // the schema keyword, e.g. "maxBytes" or "pattern"
	Rule    string // the rule's name in package rules ("" when no rule maps to the keyword)
	Msg     string
}

func (f Failure) String() string {
	return fmt.Sprintf("%s: %s (%s, rule %s)", f.Field, f.Msg, f.Keyword, f.Rule)
}

// Schema is a compiled registry schema.
type Schema struct{ s *jsonschema.Schema }

// Compile compiles the schema document doc, named url.
func Compile(url string, doc []byte) (*Schema, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", url, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertVocabs()
	voc, err := vocabulary()
	if err != nil {
		return nil, err
	}
	c.RegisterVocabulary(voc)
	if err := c.AddResource(url, v); err != nil {
		return nil, fmt.Errorf("schema %s: %w", url, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", url, err)
	}
	return &Schema{s}, nil
}

// Validate validates the JSON document doc and returns every broken rule (none: valid).
func (s *Schema) Validate(doc []byte) ([]Failure, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, err
	}
	err = s.s.Validate(v)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, err
	}
	var out []Failure
	var walk func(e *jsonschema.ValidationError, parent []string)
	walk = func(e *jsonschema.ValidationError, parent []string) {
		loc := e.InstanceLocation
		_, frag, _ := strings.Cut(e.SchemaURL, "#")
		if pre, ok := strings.CutSuffix(frag, "/propertyNames"); ok {
			// jsonschema/v6 reports a propertyNames failure at a garbled location (a
			// reused slice): it is the property the keyword sits in, below the parent.
			loc = append(slices.Clone(parent), pre[strings.LastIndexByte(pre, '/')+1:])
		} else if len(loc) == 0 {
			loc = parent // the causes of propertyNames validate a key, located nowhere
		}
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c, loc)
			}
			return
		}
		kw := strings.Join(e.ErrorKind.KeywordPath(), "/")
		field := strings.Join(loc, "/")
		out = append(out, Failure{Field: field, Keyword: kw, Rule: ruleOf(e, field, kw),
			Msg: e.ErrorKind.LocalizedString(message.NewPrinter(message.MatchLanguage("en")))})
	}
	walk(ve, nil)
	return out, nil
}

// ruleOf names the rule a failing keyword enforces: by the $defs entry named after the
// rule it sits in, by its own keyword, or by the field it checks.
func ruleOf(e *jsonschema.ValidationError, field, kw string) string {
	_, frag, _ := strings.Cut(e.SchemaURL, "#")
	for _, r := range []string{rules.RuleSubjectVN, rules.RuleSubject, rules.RuleNoSpaceControl} {
		if strings.Contains(frag, "/$defs/"+r+"/") || strings.HasSuffix(frag, "/$defs/"+r) {
			return r
		}
	}
	last := field
	if i := strings.LastIndexByte(field, '/'); i >= 0 {
		last = field[i+1:]
	}
	switch k := e.ErrorKind.(type) {
	case *maxBytesError:
		return rules.RuleMaxBytes(k.Want)
	case *nestingError:
		return rules.RuleNesting
	case *numberError:
		return rules.RuleNumbers
	case *nulError:
		return rules.RuleNoNUL
	}
	if strings.Contains(field, "routing_rules") {
		if strings.Contains(frag, "/propertyNames") || strings.HasPrefix(kw, "dependentRequired") || strings.HasPrefix(last, "$") {
			return rules.RuleRollout
		}
	}
	switch kw {
	case "maxLength":
		// maxLength (characters) always stands next to maxBytes of the same number.
		if k, ok := e.ErrorKind.(*kind.MaxLength); ok {
			return rules.RuleMaxBytes(k.Want)
		}
	case "minLength":
		if last == "subject" {
			return rules.RuleSubjectVN
		}
		return rules.RuleNotEmpty
	case "minimum", "maximum":
		switch last {
		case "timeout_ms":
			return rules.RuleTimeout
		case "retry":
			return rules.RuleRetry
		case "weight":
			return rules.RuleWeight
		}
	case "enum":
		switch last {
		case "type":
			return rules.RuleType
		case "health_status":
			return rules.RuleHealth
		}
	case "pattern":
		if last == "id" {
			return rules.RuleID
		}
	case "type":
		if slices.Contains([]string{"config", "metadata"}, last) {
			return rules.RuleObject
		}
		if strings.Contains(field, "routing_rules") {
			return rules.RuleRoutingRules
		}
	case "anyOf":
		if strings.Contains(field, "routing_rules") {
			return rules.RuleRoutingRules
		}
	}
	if strings.Contains(field, "routing_rules") {
		return rules.RuleRoutingRules
	}
	return ""
}

// ---- the vocabulary ----

type ext struct {
	maxBytes   *int
	maxNesting *int
	numbers    bool
	noNUL      bool
}

func (x *ext) Validate(ctx *jsonschema.ValidatorContext, v any) {
	if s, ok := v.(string); ok && x.maxBytes != nil && len(s) > *x.maxBytes {
		ctx.AddError(&maxBytesError{Got: len(s), Want: *x.maxBytes})
	}
	if x.maxNesting != nil && nesting(v) > *x.maxNesting {
		ctx.AddError(&nestingError{Want: *x.maxNesting})
	}
	if x.numbers {
		if lit, bad := badNumber(v); bad {
			ctx.AddError(&numberError{Lit: lit})
		}
	}
	if x.noNUL && hasNUL(v) {
		ctx.AddError(&nulError{})
	}
}

func nesting(v any) int {
	switch v := v.(type) {
	case map[string]any:
		d := 0
		for _, e := range v {
			d = max(d, nesting(e))
		}
		return d + 1
	case []any:
		d := 0
		for _, e := range v {
			d = max(d, nesting(e))
		}
		return d + 1
	}
	return 0
}

func badNumber(v any) (string, bool) {
	switch v := v.(type) {
	case json.Number:
		return string(v), !rules.NumberRoundTrips(string(v))
	case map[string]any:
		for _, e := range v {
			if lit, bad := badNumber(e); bad {
				return lit, true
			}
		}
	case []any:
		for _, e := range v {
			if lit, bad := badNumber(e); bad {
				return lit, true
			}
		}
	}
	return "", false
}

func hasNUL(v any) bool {
	switch v := v.(type) {
	case string:
		return strings.IndexByte(v, 0) >= 0
	case map[string]any:
		for k, e := range v {
			if strings.IndexByte(k, 0) >= 0 || hasNUL(e) {
				return true
			}
		}
	case []any:
		return slices.ContainsFunc(v, hasNUL)
	}
	return false
}

func intValue(obj map[string]any, name string) (*int, error) {
	v, ok := obj[name]
	if !ok {
		return nil, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%s must be an integer", name)
	}
	i, err := n.Int64()
	if err != nil {
		return nil, fmt.Errorf("%s must be an integer: %w", name, err)
	}
	x := int(i)
	return &x, nil
}

func vocabulary() (*jsonschema.Vocabulary, error) {
	meta, err := jsonschema.UnmarshalJSON(strings.NewReader(`{"properties": {
		"maxBytes": {"type": "integer", "minimum": 0},
		"maxNesting": {"type": "integer", "minimum": 1},
		"roundTripNumbers": {"type": "boolean"},
		"noNUL": {"type": "boolean"}}}`))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(rules.VocabularyURL, meta); err != nil {
		return nil, err
	}
	sch, err := c.Compile(rules.VocabularyURL)
	if err != nil {
		return nil, err
	}
	return &jsonschema.Vocabulary{URL: rules.VocabularyURL, Schema: sch,
		Compile: func(_ *jsonschema.CompilerContext, obj map[string]any) (jsonschema.SchemaExt, error) {
			var x ext
			var err error
			if x.maxBytes, err = intValue(obj, "maxBytes"); err != nil {
				return nil, err
			}
			if x.maxNesting, err = intValue(obj, "maxNesting"); err != nil {
				return nil, err
			}
			x.numbers, _ = obj["roundTripNumbers"].(bool)
			x.noNUL, _ = obj["noNUL"].(bool)
			if x == (ext{}) {
				return nil, nil
			}
			return &x, nil
		}}, nil
}

type maxBytesError struct{ Got, Want int }

func (*maxBytesError) KeywordPath() []string { return []string{"maxBytes"} }
func (k *maxBytesError) LocalizedString(p *message.Printer) string {
	return p.Sprintf("must be at most %d bytes (got %d)", k.Want, k.Got)
}

type nestingError struct{ Want int }

func (*nestingError) KeywordPath() []string { return []string{"maxNesting"} }
func (k *nestingError) LocalizedString(p *message.Printer) string {
	return p.Sprintf("must not nest objects and arrays deeper than %d levels", k.Want)
}

type numberError struct{ Lit string }

func (*numberError) KeywordPath() []string { return []string{"roundTripNumbers"} }
func (k *numberError) LocalizedString(p *message.Printer) string {
	return p.Sprintf("must hold only numbers that round-trip through an IEEE-754 double (got %s)", k.Lit)
}

type nulError struct{}

func (*nulError) KeywordPath() []string { return []string{"noNUL"} }
func (*nulError) LocalizedString(p *message.Printer) string {
	return p.Sprintf("must not contain the character U+0000")
}
