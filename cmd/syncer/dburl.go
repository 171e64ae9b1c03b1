package main

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
)

// EXTENSION_REGISTRY_DATABASE_URL takes both forms pgx (like libpq) parses: a URL
// (postgres://user:password@host/db?search_path=registry) and a keyword/value string
// (host=db user=app password=secret dbname=registry search_path=registry). Either may
// hold a password, so the value is never shown as given: redactConnString makes a copy
// with every password replaced, and only that copy reaches pgx's parser for checking and
// any message. A value too malformed to find its passwords in is not shown at all.

// redactedPassword replaces every password in a shown connection string.
const redactedPassword = "xxxxx"

// isURLForm reports whether s is meant as a URL (pgx's own test).
func isURLForm(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// passwordKeys are the connection parameters that hold secrets.
var passwordKeys = []string{"password", "sslpassword"}

// redactConnString returns s with every password replaced by xxxxx, in the same form,
// or a problem (worded without any part of s) when the passwords cannot be told apart.
func redactConnString(s string) (string, string) {
	if isURLForm(s) {
		return redactURLForm(s)
	}
	if strings.Contains(s, "://") {
		return "", "must be a postgres:// or postgresql:// URL or a keyword/value string such as host=db dbname=registry"
	}
	return redactKeywordValue(s)
}

func redactURLForm(s string) (string, string) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error quotes the input, and even its cause can hold a piece of a password
		// with a '/' or '#' in it (read as a host or a port).
		return "", "must be a valid postgres:// URL: it does not parse (characters such as @ : / ? # % in a user name or password must be percent-encoded)"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), redactedPassword)
		}
	}
	q := u.Query()
	changed := false
	for k := range q {
		for _, pk := range passwordKeys {
			if strings.EqualFold(k, pk) {
				q[k] = []string{redactedPassword}
				changed = true
			}
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.String(), ""
}

// redactKeywordValue reads s the way libpq and pgx read a keyword/value string (keyword,
// optional spaces, '=', optional spaces, then a value that is either a run of non-space
// characters with backslash escapes or a single-quoted string with backslash escapes)
// and replaces the values of the password keywords.
func redactKeywordValue(s string) (string, string) {
	const space = " \t\n\r\v\f"
	if strings.IndexByte(s, 0) >= 0 {
		return "", "must not contain a NUL byte"
	}
	var b strings.Builder
	rest := s
	n := 0
	for {
		trimmed := strings.TrimLeft(rest, space)
		b.WriteString(rest[:len(rest)-len(trimmed)])
		rest = trimmed
		if rest == "" {
			break
		}
		n++
		eq := strings.IndexByte(rest, '=')
		if eq < 0 {
			return "", fmt.Sprintf("must be a postgres:// URL or a keyword/value string: item %d has no '=' (keyword=value)", n)
		}
		key := strings.Trim(rest[:eq], space)
		if key == "" || strings.ContainsAny(key, space) {
			return "", fmt.Sprintf("must be a postgres:// URL or a keyword/value string: item %d is not keyword=value (a value with spaces must be in single quotes)", n)
		}
		b.WriteString(rest[:eq+1])
		rest = rest[eq+1:]
		trimmed = strings.TrimLeft(rest, space)
		b.WriteString(rest[:len(rest)-len(trimmed)])
		rest = trimmed
		end := 0
		if rest != "" && rest[0] == '\'' {
			end = 1
			for ; end < len(rest) && rest[end] != '\''; end++ {
				if rest[end] == '\\' {
					end++
				}
			}
			if end >= len(rest) {
				return "", fmt.Sprintf("must be a postgres:// URL or a keyword/value string: the value of %s has no closing quote", key)
			}
			end++ // the closing quote
		} else {
			for ; end < len(rest) && !strings.ContainsRune(space, rune(rest[end])); end++ {
				if rest[end] == '\\' {
					end++
				}
			}
			end = min(end, len(rest))
		}
		value := rest[:end]
		for _, pk := range passwordKeys {
			if key == pk {
				value = "'" + redactedPassword + "'"
			}
		}
		b.WriteString(value)
		rest = rest[end:]
	}
	return b.String(), ""
}

// checkPostgresURL returns what is wrong with a DATABASE_URL ("" when fine) in words that
// hold no password: pgx only ever parses the redacted copy here.
func checkPostgresURL(raw string) string {
	if strings.TrimSpace(raw) == "" {
		return "must not be blank (unset it to build the connection from the DB_* variables)"
	}
	shown, problem := redactConnString(raw)
	if problem != "" {
		return problem
	}
	if _, err := pgx.ParseConfig(shown); err != nil {
		cause := err
		if inner := errors.Unwrap(err); inner != nil {
			cause = inner // the ParseConfigError repeats the (redacted) string
		}
		if isURLForm(raw) {
			return fmt.Sprintf("must be a valid PostgreSQL URL: %v", cause)
		}
		return fmt.Sprintf("must be a valid PostgreSQL keyword/value string: %v", cause)
	}
	return ""
}

// redactPostgresURL is a DATABASE_URL as it may be shown: in its own form with every
// password replaced, or a placeholder when its passwords cannot be found.
func redactPostgresURL(raw string) string {
	shown, problem := redactConnString(raw)
	if problem != "" {
		return "(not shown: it may hold a password)"
	}
	return shown
}
