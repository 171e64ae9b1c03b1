package protocol

// Permissions are the NATS subjects one role needs (PROTOCOL.md §10): what it publishes
// and what it subscribes to. Replies arrive on the connection's inbox, _INBOX.> by
// default (a custom inbox prefix replaces it).
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// Inbox is the default reply subject space of a NATS connection.
const Inbox = "_INBOX.>"

// RouterPermissions are all a router (the Go client, `syncer watch`) needs: the two live
// subscriptions, and direct gets on both streams. It publishes nothing on registry
// subjects, so it cannot forge what other routers receive.
func (n Names) RouterPermissions() Permissions {
	return Permissions{
		Publish:   []string{"$JS.API.DIRECT.GET." + n.DeltaStream, "$JS.API.DIRECT.GET." + n.SnapshotStream},
		Subscribe: []string{n.Live(), n.Heartbeat(), Inbox},
	}
}

// SyncerPermissions are all the syncer needs: publishing deltas, announcements,
// heartbeats, snapshots and the key record; creating, updating, inspecting and purging
// its two streams; direct gets on them.
func (n Names) SyncerPermissions() Permissions {
	var js []string
	for _, s := range []string{n.DeltaStream, n.SnapshotStream} {
		js = append(js, "$JS.API.STREAM.CREATE."+s, "$JS.API.STREAM.UPDATE."+s, "$JS.API.STREAM.INFO."+s,
			"$JS.API.DIRECT.GET."+s)
	}
	js = append(js, "$JS.API.STREAM.PURGE."+n.SnapshotStream)
	return Permissions{
		Publish:   append([]string{n.DeltaSubjects(), n.SnapshotSubjects(), n.Live(), n.Heartbeat()}, js...),
		Subscribe: []string{Inbox},
	}
}
