package protocol

// Permissions are the NATS subjects one role needs (PROTOCOL.md §11): what it publishes
// and what it subscribes to. Replies arrive on the connection's inbox, _INBOX.> by
// default (a custom inbox prefix replaces it).
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// Inbox is the default reply subject space of a NATS connection.
const Inbox = "_INBOX.>"

// JSInfo is the JetStream API subject the server check asks (CheckServer).
const JSInfo = "$JS.API.INFO"

// RouterPermissions are all a router (the Go client, `syncer watch`) needs: the two live
// subscriptions, direct gets on both streams, the JetStream check at start, and its
// reports (P.report.*; a deployment may narrow it to the router's own id). It publishes
// nothing the syncer or other routers apply, so it cannot forge what they receive.
func (n Names) RouterPermissions() Permissions {
	return Permissions{
		Publish:   []string{"$JS.API.DIRECT.GET." + n.DeltaStream, "$JS.API.DIRECT.GET." + n.SnapshotStream, JSInfo, n.Reports()},
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
	// PURGE and MSG.DELETE on the snapshot stream: old snapshots are purged, a manifest
	// whose chunks are gone is deleted; NAMES: the check that no other stream serves the
	// prefix's subjects.
	js = append(js, "$JS.API.STREAM.PURGE."+n.SnapshotStream, "$JS.API.STREAM.MSG.DELETE."+n.SnapshotStream,
		"$JS.API.STREAM.NAMES", JSInfo)
	return Permissions{
		Publish:   append([]string{n.DeltaSubjects(), n.SnapshotSubjects(), n.Live(), n.Heartbeat()}, js...),
		Subscribe: []string{n.Reports(), n.Status(), Inbox},
	}
}
