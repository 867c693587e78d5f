//! The one list of projections. The server starts one of each, `/api/status` and `/readyz`
//! report each (`App::runners`), and `roomlog rebuild` names them; each of those matches on
//! [`Kind`] exhaustively, so a new projection is one new variant here and the compiler points
//! at every place that must start, report or rebuild it (issue 15: the list was written out
//! four times, and its length fixed by `[&Runner; 4]`).

/// A projection, by the name an operator uses (`roomlog rebuild NAME`) and metrics carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    History,
    Search,
    Sessions,
    Files,
}

impl Kind {
    /// Every projection, in the order the server starts them and `rebuild all` rebuilds them.
    pub const ALL: [Kind; 4] = [Kind::History, Kind::Search, Kind::Sessions, Kind::Files];

    /// Its name: `history`, `search`, `sessions` or `files`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::History => "history",
            Kind::Search => "search",
            Kind::Sessions => "sessions",
            Kind::Files => "files",
        }
    }

    /// The projection named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
        }
        assert_eq!(Kind::parse("all"), None);
    }
}
