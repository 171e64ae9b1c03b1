package deploy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// A small PromQL scanner: enough to find every metric selector of an expression (name and
// label matchers), so that the tests can hold them against what the syncer exports. It
// knows the syntax the kit uses: functions, aggregations with by/without, vector matching
// with on/ignoring/group_left/group_right, ranges and subqueries, offset, strings,
// numbers and Grafana's $variables.

// selector is one metric selector: a name and its label matchers.
type selector struct {
	Name     string
	Matchers []matcher
}

type matcher struct {
	Label, Op, Value string
}

// promqlKeywords are the identifiers that are not metric names where they stand alone.
var promqlKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "start": true, "end": true,
	// Aggregations may take their by/without clause before the parenthesis.
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// grouping keywords are followed by a parenthesised list of label names.
var groupingKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

type tok struct {
	kind byte // 'i' identifier, '{' matcher block, '(' ')' ',' others 'p'
	text string
}

func lexPromQL(expr string) ([]tok, error) {
	var out []tok
	s := expr
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#': // comment to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(s, i)
			if err != nil {
				return nil, err
			}
			out, i = append(out, tok{'s', s[i:j]}), j
		case c == '[': // range or subquery: durations and Grafana variables only
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unclosed [ at %d", i)
			}
			i += j + 1
		case c == '{':
			j := i + 1
			for j < len(s) && s[j] != '}' {
				if s[j] == '"' || s[j] == '\'' || s[j] == '`' {
					k, err := skipString(s, j)
					if err != nil {
						return nil, err
					}
					j = k
					continue
				}
				j++
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unclosed { at %d", i)
			}
			out, i = append(out, tok{'{', s[i+1 : j]}), j+1
		case c == '$': // a Grafana variable: $name, ${name}, ${name:format}
			j := i + 1
			if j < len(s) && s[j] == '{' {
				k := strings.IndexByte(s[j:], '}')
				if k < 0 {
					return nil, fmt.Errorf("unclosed ${ at %d", i)
				}
				j += k + 1
			} else {
				for j < len(s) && isIdent(s[j], false) {
					j++
				}
			}
			i = j
		case c >= '0' && c <= '9' || c == '.':
			j := i
			for j < len(s) && (isIdent(s[j], false) || s[j] == '.' || ((s[j] == '+' || s[j] == '-') && (s[j-1] == 'e' || s[j-1] == 'E'))) {
				j++
			}
			i = j
		case isIdent(c, true):
			j := i
			for j < len(s) && isIdent(s[j], false) {
				j++
			}
			out, i = append(out, tok{'i', s[i:j]}), j
		case c == '(' || c == ')' || c == ',':
			out, i = append(out, tok{c, string(c)}), i+1
		default:
			out, i = append(out, tok{'p', string(c)}), i+1
		}
	}
	return out, nil
}

func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		if s[j] == '\\' && q != '`' {
			j++
			continue
		}
		if s[j] == q {
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unclosed string at %d", i)
}

func isIdent(c byte, first bool) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
}

var matcherRE = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`" + `)\s*$`)

// selectors returns the metric selectors of expr.
func selectors(expr string) ([]selector, error) {
	toks, err := lexPromQL(expr)
	if err != nil {
		return nil, err
	}
	var out []selector
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		next := func(k int) tok {
			if i+k < len(toks) {
				return toks[i+k]
			}
			return tok{}
		}
		switch t.kind {
		case 'i':
			if groupingKeywords[t.text] && next(1).kind == '(' {
				for i++; i < len(toks) && toks[i].kind != ')'; i++ { // label names, not metrics
				}
				continue
			}
			if promqlKeywords[t.text] || next(1).kind == '(' { // a function call
				continue
			}
			sel := selector{Name: t.text}
			if next(1).kind == '{' {
				m, err := parseMatchers(next(1).text)
				if err != nil {
					return nil, fmt.Errorf("%s{%s}: %v", t.text, next(1).text, err)
				}
				sel.Matchers = m
				i++
			}
			out = append(out, sel)
		case '{':
			return nil, fmt.Errorf("selector {%s} without a metric name", t.text)
		}
	}
	return out, nil
}

func parseMatchers(body string) ([]matcher, error) {
	var out []matcher
	for _, part := range splitMatchers(body) {
		if strings.TrimSpace(part) == "" {
			continue
		}
		m := matcherRE.FindStringSubmatch(part)
		if m == nil {
			return nil, fmt.Errorf("cannot read matcher %q", part)
		}
		v := m[3][1 : len(m[3])-1]
		out = append(out, matcher{Label: m[1], Op: m[2], Value: strings.ReplaceAll(v, `\\`, `\`)})
	}
	return out, nil
}

// splitMatchers splits a matcher block at the commas outside strings.
func splitMatchers(body string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '"', '\'', '`':
			if j, err := skipString(body, i); err == nil {
				i = j - 1
			}
		case ',':
			parts, start = append(parts, body[start:i]), i+1
		}
	}
	return append(parts, body[start:])
}

func TestSelectors(t *testing.T) {
	for _, c := range []struct {
		expr string
		want string // name{label op value,...} joined by " "
	}{
		{`sum by (job, le) (rate(a_bucket{job=~"$job"}[$__rate_interval]))`, `a_bucket{job=~$job}`},
		{`histogram_quantile(0.99, sum(rate(x_bucket[5m])) by (le)) > 0.5`, `x_bucket{}`},
		{`(a - b) > 0 and on (instance) (c == 1)`, `a{} b{} c{}`},
		{`absent(m)`, `m{}`},
		{`sum without (instance) (x{state=~"stale|rejecting", r=">100"}) offset 5m > 1e-3`, `x{state=~stale|rejecting,r=>100}`},
		{`x{a="b,c", d!="}"} * on (i) group_left (v) y`, `x{a=b,c,d!=}} y{}`},
		{"count(x) # a comment with y in it", `x{}`},
	} {
		sels, err := selectors(c.expr)
		if err != nil {
			t.Errorf("%s: %v", c.expr, err)
			continue
		}
		var got []string
		for _, s := range sels {
			var ms []string
			for _, m := range s.Matchers {
				ms = append(ms, m.Label+m.Op+m.Value)
			}
			got = append(got, s.Name+"{"+strings.Join(ms, ",")+"}")
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%s: got %q, want %q", c.expr, strings.Join(got, " "), c.want)
		}
	}
	if _, err := selectors(`{__name__="x"}`); err == nil {
		t.Error("a selector without a name must be refused (it cannot be checked)")
	}
}
