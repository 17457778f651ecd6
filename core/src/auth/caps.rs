//! Rights: what a connection may do to which rooms, channels and users.
//!
//! A token's `caps` claim is a list of grants, each naming what it covers (exact names, or
//! prefixes ending in `*`) and the operations it allows. A connection may do exactly what
//! some grant allows; with no `caps` it has the server's default (everything, or nothing
//! under `--auth-deny-by-default`). Room tokens add one room's grant for one connection.

use serde::Deserialize;

/// An operation a grant may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Join a room.
    Join,
    /// Publish to a room, channel or user.
    Publish,
    /// Join a room with `presence: true`.
    Presence,
    /// Recover a room's history with `since`.
    History,
    /// Subscribe to a channel.
    Subscribe,
}

impl Op {
    fn bit(self) -> u8 {
        match self {
            Op::Join => 1,
            Op::Publish => 2,
            Op::Presence => 4,
            Op::History => 8,
            Op::Subscribe => 16,
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "join" => Op::Join,
            "publish" => Op::Publish,
            "presence" => Op::Presence,
            "history" => Op::History,
            "subscribe" => Op::Subscribe,
            _ => return None,
        })
    }
}

/// What a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Rooms (ops: join, publish, presence, history).
    Rooms,
    /// Channels (ops: subscribe, publish).
    Channels,
    /// Users, as targets of direct messages (op: publish).
    Users,
}

impl Scope {
    /// The operations that make sense for this kind of target.
    fn allows(self, op: Op) -> bool {
        match self {
            Scope::Rooms => matches!(op, Op::Join | Op::Publish | Op::Presence | Op::History),
            Scope::Channels => matches!(op, Op::Subscribe | Op::Publish),
            Scope::Users => op == Op::Publish,
        }
    }
}

/// A set of operations, small enough to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ops(u8);

impl Ops {
    /// A room token's default: join, publish, presence and history.
    pub const ROOM_DEFAULT: Ops = Ops(1 | 2 | 4 | 8);

    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }

    /// The set as bits, for snapshots.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// A set from [`Ops::bits`]; bits of no op are dropped.
    pub fn from_bits(bits: u8) -> Ops {
        Ops(bits & 31)
    }

    fn insert(&mut self, op: Op) {
        self.0 |= op.bit();
    }

    /// Parses a claim's op list for this scope.
    pub(crate) fn parse(scope: Scope, names: &[String]) -> Result<Ops, CapsError> {
        let mut ops = Ops::default();
        for n in names {
            let op = Op::parse(n)
                .filter(|&op| scope.allows(op))
                .ok_or_else(|| CapsError::UnknownOp(n.clone()))?;
            ops.insert(op);
        }
        Ok(ops)
    }
}

/// One name pattern: an exact name, or a prefix ending in `*` (`"*"` alone is everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(Box<str>),
    /// Every name starting with this (possibly empty) prefix.
    Prefix(Box<str>),
}

impl Pattern {
    /// Parses `"name"` or `"prefix*"`; a `*` anywhere but the end is refused.
    pub fn parse(s: &str) -> Result<Pattern, CapsError> {
        match s.strip_suffix('*') {
            Some(p) if !p.contains('*') => Ok(Pattern::Prefix(p.into())),
            None if !s.is_empty() && !s.contains('*') => Ok(Pattern::Exact(s.into())),
            _ => Err(CapsError::BadPattern(s.to_owned())),
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(n) => **n == *name,
            Pattern::Prefix(p) => name.starts_with(&**p),
        }
    }
}

/// One grant: these ops on these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What kind of target it covers.
    pub scope: Scope,
    /// The names it covers.
    pub patterns: Vec<Pattern>,
    /// What it allows on them.
    pub ops: Ops,
}

/// A `caps` claim that cannot be understood: the token is refused (a grant misread could
/// give more than was meant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapsError {
    /// A grant names none or several of `rooms`, `channels`, `users`.
    #[error("a grant must name exactly one of rooms, channels or users")]
    Scope,
    /// An op unknown, or meaningless for the grant's kind of target.
    #[error("unknown or misplaced op {0:?}")]
    UnknownOp(String),
    /// A pattern with `*` anywhere but the end, or empty.
    #[error("bad pattern {0:?}")]
    BadPattern(String),
    /// Not a list of grant objects.
    #[error("caps must be a list of grants: {0}")]
    Shape(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantWire {
    rooms: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    users: Option<Vec<String>>,
    allow: Vec<String>,
}

/// The rights a `caps` claim grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caps {
    grants: Vec<Grant>,
    /// The claim as it was signed, kept so a hibernated hub can rebuild the same rights.
    claim: Box<str>,
}

impl Caps {
    /// Parses a `caps` claim (the raw JSON list).
    pub fn parse(raw: &serde_json::value::RawValue) -> Result<Caps, CapsError> {
        let wire: Vec<GrantWire> =
            serde_json::from_str(raw.get()).map_err(|e| CapsError::Shape(e.to_string()))?;
        let mut grants = Vec::with_capacity(wire.len());
        for g in wire {
            let (scope, names) = match (g.rooms, g.channels, g.users) {
                (Some(n), None, None) => (Scope::Rooms, n),
                (None, Some(n), None) => (Scope::Channels, n),
                (None, None, Some(n)) => (Scope::Users, n),
                _ => return Err(CapsError::Scope),
            };
            let patterns = names
                .iter()
                .map(|n| Pattern::parse(n))
                .collect::<Result<Vec<_>, _>>()?;
            grants.push(Grant {
                scope,
                patterns,
                ops: Ops::parse(scope, &g.allow)?,
            });
        }
        Ok(Caps {
            grants,
            claim: raw.get().into(),
        })
    }

    /// The claim these rights came from (JSON), for snapshots.
    pub fn claim(&self) -> &str {
        &self.claim
    }

    /// Whether some grant allows `op` on the target `name` of kind `scope`.
    pub fn allows(&self, scope: Scope, name: &str, op: Op) -> bool {
        self.grants.iter().any(|g| {
            g.scope == scope && g.ops.contains(op) && g.patterns.iter().any(|p| p.matches(name))
        })
    }

    /// The grants, in claim order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(json: &str) -> Result<Caps, CapsError> {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(json).unwrap();
        Caps::parse(&raw)
    }

    #[test]
    fn patterns_match_exact_names_and_prefixes_only() {
        let p = Pattern::parse("game:*").unwrap();
        assert!(p.matches("game:1") && p.matches("game:"));
        assert!(!p.matches("gam") && !p.matches("lobby") && !p.matches("xgame:1"));
        let e = Pattern::parse("lobby").unwrap();
        assert!(e.matches("lobby") && !e.matches("lobby2") && !e.matches("lobb"));
        assert!(Pattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "a*b", "**", "*a"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_grant_allows_its_ops_on_its_names_and_nothing_else() {
        let c = caps(
            r#"[{"rooms":["game:*"],"allow":["join"]},
                {"rooms":["lobby"],"allow":["join","publish","presence","history"]},
                {"channels":["news"],"allow":["subscribe"]},
                {"users":["admin"],"allow":["publish"]}]"#,
        )
        .unwrap();
        assert!(c.allows(Scope::Rooms, "game:1", Op::Join));
        assert!(!c.allows(Scope::Rooms, "game:1", Op::Publish));
        assert!(!c.allows(Scope::Rooms, "game:1", Op::Presence));
        assert!(c.allows(Scope::Rooms, "lobby", Op::Publish));
        assert!(c.allows(Scope::Rooms, "lobby", Op::History));
        assert!(!c.allows(Scope::Rooms, "other", Op::Join));
        // Scopes do not leak into each other: a channel named like a room is not a room.
        assert!(!c.allows(Scope::Channels, "lobby", Op::Publish));
        assert!(c.allows(Scope::Channels, "news", Op::Subscribe));
        assert!(!c.allows(Scope::Channels, "news", Op::Publish));
        assert!(c.allows(Scope::Users, "admin", Op::Publish));
        assert!(!c.allows(Scope::Users, "bob", Op::Publish));
        assert!(!Caps::default().allows(Scope::Rooms, "x", Op::Join));
    }

    #[test]
    fn malformed_grants_refuse_the_token() {
        for (json, want) in [
            (r#"[{"allow":["join"]}]"#, CapsError::Scope),
            (
                r#"[{"rooms":["a"],"channels":["b"],"allow":["join"]}]"#,
                CapsError::Scope,
            ),
            (
                r#"[{"rooms":["a"],"allow":["fly"]}]"#,
                CapsError::UnknownOp("fly".into()),
            ),
            (
                r#"[{"users":["a"],"allow":["join"]}]"#,
                CapsError::UnknownOp("join".into()),
            ),
            (
                r#"[{"channels":["a"],"allow":["presence"]}]"#,
                CapsError::UnknownOp("presence".into()),
            ),
            (
                r#"[{"rooms":["a*b"],"allow":["join"]}]"#,
                CapsError::BadPattern("a*b".into()),
            ),
        ] {
            assert_eq!(caps(json).unwrap_err(), want, "{json}");
        }
        for shape in [
            r#"{"rooms":["a"]}"#,
            r#"[1]"#,
            r#"[{"rooms":"a","allow":["join"]}]"#,
            r#"[{"rooms":["a"],"allow":["join"],"extra":1}]"#,
        ] {
            assert!(matches!(caps(shape), Err(CapsError::Shape(_))), "{shape}");
        }
    }
}
