package syncer

import (
	"strings"
	"testing"
	"time"
)

func TestLeftTimeline(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 1, 9, 0, 0, 123456000, time.UTC)
	other := at.Add(time.Millisecond)
	pub := origin{RegistryID: "r1", Revision: 10, CommittedAt: at}
	cases := []struct {
		name string
		o    origin
		db   dbOrigin
		want string // substring of the reason; "" = same timeline
	}{
		{"same", pub, dbOrigin{RegistryID: "r1", Counter: 12, CommittedAt: &at}, ""},
		{"same, nanoseconds below PostgreSQL's precision", origin{RegistryID: "r1", Revision: 10, CommittedAt: at.Add(400)}, dbOrigin{RegistryID: "r1", Counter: 10, CommittedAt: &at}, ""},
		{"replaced", pub, dbOrigin{RegistryID: "r2", Counter: 12, CommittedAt: &at}, "was replaced"},
		{"behind", pub, dbOrigin{RegistryID: "r1", Counter: 9}, "below the published revision 10"},
		{"same number, other transaction", pub, dbOrigin{RegistryID: "r1", Counter: 40, CommittedAt: &other}, "another transaction"},
		{"revision missing from the change log", pub, dbOrigin{RegistryID: "r1", Counter: 40}, "not in the database's change log"},
		{"published by an older syncer: no identity, revision exists", origin{Revision: 10}, dbOrigin{RegistryID: "r1", Counter: 10, CommittedAt: &other}, ""},
		{"revision 0", origin{RegistryID: "r1"}, dbOrigin{RegistryID: "r1"}, ""},
	}
	for _, c := range cases {
		got := c.o.leftTimeline(c.db)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: leftTimeline = %q, want %q", c.name, got, c.want)
		}
	}
}
