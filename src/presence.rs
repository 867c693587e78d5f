//! Who is in a room: the users whose connections have joined it, each with how many
//! connections it has there, as plain state. [`crate::actor::room::RoomActor`] owns one
//! [`RoomPresence`] and keeps it in step with its members.
//!
//! Presence is ephemeral: it is never written to the log as events. It describes open TCP
//! connections of this process, which a restart ends anyway, so a replay could only rebuild
//! people who are no longer there; and it changes with every reconnect, which would grow the log
//! (and the backups, and the compaction work) with data nobody reads later. A restarted room
//! rebuilds it from the connections that join again.
//!
//! Cluster shape: each node answers with its own [`NodeMembers`] (its node id and its users'
//! connection counts on that node); a read merges the sets of every node with [`merge`], summing
//! the counts of a user present on several nodes. One node today answers alone; nodes sharing one
//! log later publish their sets (a key per room and node, with a time to live so that a dead
//! node's set lapses) and the read merges what it finds.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A connection's id, unique within the process.
pub type MemberId = u64;

/// A change the room may announce (`chat.join_leave`): a user's first connection arrived, or
/// its last one departed. A second connection of the same user changes only its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Arrived(String),
    Departed(String),
}

/// One room's users on this node, by connection.
#[derive(Debug, Default)]
pub struct RoomPresence {
    /// The user of each connection present, to count it out when it departs.
    by_member: HashMap<MemberId, String>,
    /// Connections per user; a user with none is removed.
    users: BTreeMap<String, u32>,
}

impl RoomPresence {
    /// Records connection `member` of `user` as present. Idempotent: a connection already
    /// present (a re-join) changes nothing.
    pub fn arrive(&mut self, member: MemberId, user: &str) -> Option<PresenceChange> {
        if self.by_member.contains_key(&member) {
            return None;
        }
        self.by_member.insert(member, user.to_owned());
        let count = self.users.entry(user.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        (*count == 1).then(|| PresenceChange::Arrived(user.to_owned()))
    }

    /// Records that connection `member` left. Idempotent: a connection not present (already
    /// counted out, or never registered) changes nothing, so every exit path may call it.
    pub fn depart(&mut self, member: MemberId) -> Option<PresenceChange> {
        let user = self.by_member.remove(&member)?;
        let count = self.users.get_mut(&user)?;
        *count = count.saturating_sub(1);
        if *count > 0 {
            return None;
        }
        self.users.remove(&user);
        Some(PresenceChange::Departed(user))
    }

    /// This node's set, as it is published for a read.
    pub fn snapshot(&self, node: &str) -> NodeMembers {
        NodeMembers { node: node.to_owned(), users: self.users.clone() }
    }

    /// Whether nobody is present.
    pub fn is_empty(&self) -> bool {
        self.by_member.is_empty()
    }
}

/// One node's members of one room: what a node answers (and, in a cluster, publishes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMembers {
    /// The node's id (`chat.node_id`).
    pub node: String,
    /// Connections per user on that node.
    pub users: BTreeMap<String, u32>,
}

/// A user present in a room, as the wire shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresentUser {
    /// The token's user, or the name an anonymous caller gave.
    pub user: String,
    /// Open connections of this user that joined the room, over every node.
    pub connections: u32,
}

/// The users present over every node's set, by user name; a user on several nodes (or listed
/// twice by one) has the sum of its counts.
pub fn merge(nodes: impl IntoIterator<Item = NodeMembers>) -> Vec<PresentUser> {
    let mut users: BTreeMap<String, u32> = BTreeMap::new();
    for node in nodes {
        for (user, count) in node.users {
            let total = users.entry(user).or_insert(0);
            *total = total.saturating_add(count);
        }
    }
    users.into_iter().filter(|(_, c)| *c > 0).map(|(user, connections)| PresentUser { user, connections }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrived(user: &str) -> Option<PresenceChange> {
        Some(PresenceChange::Arrived(user.into()))
    }

    fn departed(user: &str) -> Option<PresenceChange> {
        Some(PresenceChange::Departed(user.into()))
    }

    fn counts(presence: &RoomPresence) -> Vec<(String, u32)> {
        merge([presence.snapshot("n1")]).into_iter().map(|u| (u.user, u.connections)).collect()
    }

    #[test]
    fn given_a_user_with_two_connections_then_only_the_first_arrival_and_last_departure_are_changes() {
        let mut presence = RoomPresence::default();
        assert_eq!(presence.arrive(1, "ann"), arrived("ann"));
        assert_eq!(presence.arrive(2, "ann"), None, "a second connection is not news");
        assert_eq!(presence.arrive(3, "bob"), arrived("bob"));
        assert_eq!(counts(&presence), vec![("ann".into(), 2), ("bob".into(), 1)]);
        assert_eq!(presence.depart(1), None, "ann is still there");
        assert_eq!(presence.depart(2), departed("ann"));
        assert_eq!(counts(&presence), vec![("bob".into(), 1)]);
    }

    #[test]
    fn given_any_exit_path_when_departures_repeat_then_counts_never_go_wrong() {
        let mut presence = RoomPresence::default();
        presence.arrive(1, "ann");
        assert_eq!(presence.arrive(1, "ann"), None, "a re-join of the same connection");
        assert_eq!(presence.depart(1), departed("ann"));
        assert_eq!(presence.depart(1), None, "a second departure of the same connection");
        assert_eq!(presence.depart(99), None, "a connection never present");
        assert!(presence.is_empty());
        assert_eq!(presence.arrive(2, "ann"), arrived("ann"), "and ann can come back");
    }

    #[test]
    fn given_sets_of_several_nodes_when_merged_then_counts_of_a_user_add_up() {
        let node = |id: &str, users: &[(&str, u32)]| NodeMembers {
            node: id.into(),
            users: users.iter().map(|&(u, c)| (u.to_owned(), c)).collect(),
        };
        let merged = merge([node("a", &[("ann", 2), ("bob", 1)]), node("b", &[("ann", 1), ("cy", 1)]), node("c", &[])]);
        let view: Vec<_> = merged.iter().map(|u| (u.user.as_str(), u.connections)).collect();
        assert_eq!(view, vec![("ann", 3), ("bob", 1), ("cy", 1)]);
    }
}
