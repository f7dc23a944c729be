//! Semver constraints as Flux reads them (`repositoryRef.semver` of a Git or OCI source), so that the control plane
//! refuses exactly what Flux would refuse and the agent picks the tag Flux would pick.
//!
//! Flux parses constraints with Masterminds/semver v3 and tags with `fluxcd/pkg/version.ParseVersion` (strict semver,
//! one optional leading `v`). No Rust crate implements Masterminds' grammar; npm's node-semver is the nearest
//! relative (`nodejs-semver`, a maintained port), so this module rewrites the few forms that only Masterminds knows
//! into npm's and evaluates there, instead of holding a semver parser of its own:
//!
//! - `,` separates the comparators of a set (`>= 1.2, < 3.0`), as a space does; npm has no commas and, worse, reads
//!   `>= 1.2, < 3.0` as `<3.0.0` without a word, so every comma is rewritten to a space before npm sees it;
//! - `=>` and `=<` are Masterminds' spellings of `>=` and `<=`;
//! - `!=V` excludes what the x-range `V` covers (`!=1.2.3` one version, `!=1.2` or `!=1.2.x` every 1.2 patch): npm
//!   has no such comparator, so it is kept aside and checked on its own;
//! - a pre-release version satisfies a set only when every comparator of the set names a pre-release (Masterminds
//!   checks each comparator), and then by plain ordering: `>=1.0.0-0` takes `1.5.0-rc.1`, which npm would refuse
//!   (npm only admits pre-releases of the same `major.minor.patch` as a comparator's).
//!
//! Known differences left: `~0.0.0` covers every version in Masterminds and `<0.1.0` in npm; an `!=` alone admits
//! no pre-release here, while Masterminds' `!=1.2.3` alone admits them. Both are tested, so a change shows.

use std::cmp::Ordering;
use std::fmt;

use nodejs_semver::Range;
pub use nodejs_semver::Version;

/// The longest constraint accepted: far past any a person writes, short enough to bound the work one costs.
pub const MAX_CONSTRAINT_LENGTH: usize = 1024;

/// A constraint Flux would accept, ready to match versions.
#[derive(Debug, Clone)]
pub struct Constraint {
    text: String,
    alternatives: Vec<Alternative>,
}

/// One `||`-separated set of comparators.
#[derive(Debug, Clone)]
struct Alternative {
    range: Range,
    /// `!=` comparators, as the x-ranges they exclude.
    excluded: Vec<Range>,
    /// Whether every comparator names a pre-release, which is when pre-release versions are considered at all.
    prereleases: bool,
}

/// Why a constraint is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintError {
    pub constraint: String,
    pub reason: String,
}

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not a semver range: {}", self.constraint, self.reason)
    }
}

impl std::error::Error for ConstraintError {}

/// Comparison operators Masterminds knows, longest first so that `>=` is not read as `>`.
const OPERATORS: [&str; 11] = ["!=", ">=", "=>", "<=", "=<", "~>", ">", "<", "=", "~", "^"];

impl Constraint {
    pub fn parse(text: &str) -> Result<Self, ConstraintError> {
        let refuse = |reason: &str| ConstraintError {
            constraint: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.trim().is_empty() {
            return Err(refuse("it is empty"));
        }
        if text.len() > MAX_CONSTRAINT_LENGTH {
            return Err(refuse(&format!("it is longer than {MAX_CONSTRAINT_LENGTH} characters")));
        }
        let mut alternatives = Vec::new();
        for alternative in text.split("||") {
            let tokens = comparators(alternative);
            if tokens.is_empty() {
                return Err(refuse("an alternative between '||' is empty"));
            }
            let mut kept = Vec::new();
            let mut excluded = Vec::new();
            let mut prereleases = true;
            for token in &tokens {
                if token == "-" {
                    kept.push(token.clone());
                    continue;
                }
                prereleases &= names_prerelease(token);
                if let Some(version) = token.strip_prefix("!=") {
                    excluded.push(
                        Range::parse(version.trim())
                            .map_err(|_| refuse(&format!("'{token}' does not name a version")))?,
                    );
                } else if let Some(version) = token.strip_prefix("=>") {
                    kept.push(format!(">={version}"));
                } else if let Some(version) = token.strip_prefix("=<") {
                    kept.push(format!("<={version}"));
                } else {
                    kept.push(token.clone());
                }
            }
            if kept.first().is_some_and(|t| t == "-") || kept.last().is_some_and(|t| t == "-") {
                return Err(refuse("a hyphen range needs a version on each side ('1.0.0 - 2.0.0')"));
            }
            let range = if kept.is_empty() {
                Range::any()
            } else {
                Range::parse(kept.join(" ")).map_err(|_| {
                    refuse("expected comparators such as '>=1.1.0 <2.0.0', '~1.2', '^1', '1.2.x' or '1.0.0 - 2.0.0'")
                })?
            };
            alternatives.push(Alternative {
                range,
                excluded,
                prereleases,
            });
        }
        Ok(Self {
            text: text.to_owned(),
            alternatives,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `version` satisfies the constraint, as Masterminds' `Check` decides.
    pub fn matches(&self, version: &Version) -> bool {
        let prerelease = version.is_prerelease();
        self.alternatives.iter().any(|alternative| {
            let within = if prerelease {
                alternative.prereleases && alternative.range.satisfies_with_prerelease(version, true)
            } else {
                alternative.range.satisfies(version)
            };
            within
                && !alternative
                    .excluded
                    .iter()
                    .any(|excluded| excluded.satisfies_with_prerelease(version, true))
        })
    }

    /// The tag Flux picks among `tags` (name, and a time that orders tags of equal versions: Flux takes the latest
    /// commit): the highest version that satisfies the constraint, tags that are not versions ignored.
    pub fn latest<'a, T: Ord + Copy>(&self, tags: impl IntoIterator<Item = (&'a str, T)>) -> Option<&'a str> {
        tags.into_iter()
            .filter_map(|(tag, time)| {
                let version = parse_tag(tag)?;
                self.matches(&version).then_some((version, time, tag))
            })
            .max_by(|a, b| match a.0.cmp(&b.0) {
                Ordering::Equal => (a.1, a.2).cmp(&(b.1, b.2)),
                order => order,
            })
            .map(|(_, _, tag)| tag)
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The comparators of one alternative: split at spaces and commas, each operator joined to its version (Masterminds
/// allows `>= 1.2`), a hyphen range's `-` kept as a token of its own.
fn comparators(alternative: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut pending = String::new();
    for word in alternative.split([' ', '\t', ',']).filter(|w| !w.is_empty()) {
        if OPERATORS.contains(&word) {
            pending.push_str(word);
            continue;
        }
        tokens.push(format!("{pending}{word}"));
        pending.clear();
    }
    if !pending.is_empty() {
        tokens.push(pending);
    }
    tokens
}

/// Whether a comparator's version has a pre-release part (`>=1.0.0-rc.1`); build metadata does not count.
fn names_prerelease(comparator: &str) -> bool {
    let version = comparator.split('+').next().unwrap_or_default();
    version.contains('-')
}

/// A tag as Flux reads it: strict semver (no leading zeros, all of `major.minor.patch`), with one optional leading
/// `v`. `None` for every other tag, which Flux skips.
pub fn parse_tag(tag: &str) -> Option<Version> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    let version = Version::parse(bare).ok()?;
    // nodejs-semver is lenient (leading zeros, spaces, `=`); strict semver is what prints back the same
    let canonical = version.to_string();
    (canonical == bare).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(constraint: &str, version: &str) -> bool {
        let constraint = Constraint::parse(constraint).unwrap_or_else(|e| panic!("{e}"));
        constraint.matches(&parse_tag(version).unwrap())
    }

    fn picks(constraint: &str, tags: &[&str]) -> Option<String> {
        let constraint = Constraint::parse(constraint).unwrap();
        constraint
            .latest(tags.iter().enumerate().map(|(i, t)| (*t, i)))
            .map(str::to_owned)
    }

    #[test]
    fn space_separated_comparators_are_a_conjunction() {
        assert!(matches(">=1.1.0 <2.0.0", "1.1.0"));
        assert!(matches(">=1.1.0 <2.0.0", "1.9.9"));
        assert!(!matches(">=1.1.0 <2.0.0", "2.0.0"));
        assert!(!matches(">=1.1.0 <2.0.0", "1.0.9"));
    }

    #[test]
    fn comma_separated_comparators_are_a_conjunction_not_the_last_one_alone() {
        // npm would read this as `<3.0.0` alone and take 1.0.0
        assert!(!matches(">= 1.2, < 3.0", "1.0.0"));
        assert!(matches(">= 1.2, < 3.0", "1.2.0"));
        assert!(matches(">= 1.2, < 3.0", "2.9.9"));
        assert!(!matches(">= 1.2, < 3.0", "3.0.0"));
        assert!(matches(">=1.2,<3.0", "2.0.0"));
        assert!(!matches(">=1.2,<3.0", "3.1.0"));
    }

    #[test]
    fn wildcards_cover_the_missing_parts() {
        for form in ["1.2.x", "1.2.X", "1.2.*", "1.2", "=1.2.x"] {
            assert!(matches(form, "1.2.0"), "{form}");
            assert!(matches(form, "1.2.17"), "{form}");
            assert!(!matches(form, "1.3.0"), "{form}");
            assert!(!matches(form, "1.1.9"), "{form}");
        }
        assert!(matches("*", "9.9.9"));
        assert!(matches("1.x", "1.9.0"));
        assert!(!matches("1.x", "2.0.0"));
    }

    #[test]
    fn tilde_allows_patch_releases_and_caret_minor_ones() {
        assert!(matches("~1.2", "1.2.9"));
        assert!(!matches("~1.2", "1.3.0"));
        assert!(matches("~1.2.3", "1.2.4"));
        assert!(!matches("~1.2.3", "1.2.2"));
        assert!(matches("~>1.2.3", "1.2.9"));
        assert!(matches("~1", "1.9.0"));
        assert!(!matches("~1", "2.0.0"));
        assert!(matches("^1", "1.9.9"));
        assert!(!matches("^1", "2.0.0"));
        assert!(matches("^1.2.3", "1.9.0"));
        assert!(!matches("^1.2.3", "1.2.2"));
        assert!(matches("^0.2.3", "0.2.9"));
        assert!(!matches("^0.2.3", "0.3.0"));
        assert!(matches("^0.0.3", "0.0.3"));
        assert!(!matches("^0.0.3", "0.0.4"));
        assert!(matches("^0", "0.9.0"));
        assert!(!matches("^0", "1.0.0"));
    }

    #[test]
    fn hyphen_ranges_include_both_ends() {
        assert!(matches("1.0.0 - 2.0.0", "1.0.0"));
        assert!(matches("1.0.0 - 2.0.0", "2.0.0"));
        assert!(!matches("1.0.0 - 2.0.0", "2.0.1"));
        // a partial upper end covers what it names, as Masterminds' `<= 2` does
        assert!(matches("1.0 - 2", "2.5.0"));
        assert!(!matches("1.0 - 2", "3.0.0"));
    }

    #[test]
    fn alternatives_are_a_disjunction() {
        assert!(matches("^1 || ^3", "1.5.0"));
        assert!(matches("^1 || ^3", "3.0.0"));
        assert!(!matches("^1 || ^3", "2.0.0"));
        assert!(matches(">=1.0.0, <1.1.0 || >=2.0.0", "2.3.0"));
        assert!(!matches(">=1.0.0, <1.1.0 || >=2.0.0", "1.5.0"));
    }

    #[test]
    fn masterminds_operator_spellings_are_understood() {
        assert!(matches("=>1.2.0", "1.2.0"));
        assert!(!matches("=>1.2.0", "1.1.9"));
        assert!(matches("=<1.2.0", "1.2.0"));
        assert!(!matches("=<1.2.0", "1.2.1"));
        assert!(matches("> 1.2", "1.3.0"));
        assert!(!matches("> 1.2", "1.2.9"), "Masterminds: 1.2.9 is not greater than 1.2");
        assert!(matches("<= 1.2", "1.2.9"));
        assert!(matches(">=v1.2.3", "1.2.3"));
        assert!(matches("v1.2.3", "1.2.3"));
    }

    #[test]
    fn not_equal_excludes_a_version_or_an_x_range() {
        assert!(!matches(">=1.0.0, !=1.2.3", "1.2.3"));
        assert!(matches(">=1.0.0, !=1.2.3", "1.2.4"));
        assert!(!matches(">=1.0.0 !=1.2", "1.2.7"));
        assert!(!matches(">=1.0.0 !=1.2.x", "1.2.0"));
        assert!(matches(">=1.0.0 !=1.2.x", "1.3.0"));
        assert!(matches("!=1.2.3", "1.2.4"), "an exclusion alone admits the rest");
        assert!(!matches("!=1.2.3", "1.2.3"));
    }

    #[test]
    fn prereleases_count_only_when_every_comparator_names_one() {
        assert!(!matches(">=1.0.0", "1.5.0-rc.1"));
        assert!(!matches("^1", "1.5.0-rc.1"));
        // Masterminds takes any later pre-release here, npm would take only 1.0.0's
        assert!(matches(">=1.0.0-0", "1.5.0-rc.1"));
        assert!(matches(">=1.0.0-0", "1.5.0"));
        assert!(!matches(">=1.0.0-0 <2.0.0", "1.5.0-rc.1"), "`<2.0.0` names none");
        assert!(matches(">=1.0.0-0 <2.0.0-0", "1.5.0-rc.1"));
        assert!(!matches("~1.2.3-beta", "1.3.0-alpha"));
        assert!(matches("~1.2.3-beta", "1.2.4"));
    }

    #[test]
    fn known_differences_from_masterminds_stay_as_documented() {
        // Masterminds: `~0.0.0` is any version; npm (and so this module): below 0.1.0
        assert!(matches("~0.0.0", "0.0.5"));
        assert!(!matches("~0.0.0", "1.0.0"));
        // Masterminds admits pre-releases against `!=1.2.3` alone; here an `!=` alone admits none
        assert!(!matches("!=1.2.3", "2.0.0-rc.1"));
    }

    #[test]
    fn what_flux_refuses_is_refused_with_the_constraint_named() {
        for bad in [
            "", "   ", "latest", "foo", ">=", "1.2.3.4", "^1 ||", ">= 1.0 -", "!=x.y", "1.0.0 - ",
        ] {
            let err = Constraint::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
        let long = ">=1.0.0 ".repeat(200);
        assert!(Constraint::parse(&long).unwrap_err().reason.contains("longer"));
    }

    #[test]
    fn tags_are_read_as_strict_semver_with_an_optional_v() {
        assert_eq!(parse_tag("v1.2.3").unwrap().to_string(), "1.2.3");
        assert_eq!(parse_tag("1.2.3-rc.1").unwrap().to_string(), "1.2.3-rc.1");
        assert!(parse_tag("1.2.3+build.5").is_some());
        for not_a_version in [
            "1.2",
            "v1",
            "01.2.3",
            "1.2.3-01",
            "vv1.2.3",
            "=1.2.3",
            " 1.2.3",
            "release-1",
            "latest",
        ] {
            assert!(parse_tag(not_a_version).is_none(), "{not_a_version}");
        }
    }

    #[test]
    fn the_highest_matching_tag_wins_and_equal_versions_go_to_the_later_commit() {
        let tags = [
            "v1.0.0",
            "v1.4.2",
            "v2.0.0",
            "1.4.1",
            "v1.5.0-rc.1",
            "not-a-version",
            "v1.4",
        ];
        assert_eq!(picks(">=1.0.0 <2.0.0", &tags).as_deref(), Some("v1.4.2"));
        assert_eq!(picks("~1.4", &tags).as_deref(), Some("v1.4.2"));
        assert_eq!(picks("*", &tags).as_deref(), Some("v2.0.0"));
        assert_eq!(picks(">=3", &tags), None);
        // 1.4.2 and v1.4.2+meta are equal versions: the later one (here, the later index) wins
        assert_eq!(picks("1.4.2", &["v1.4.2+b", "v1.4.2"]).as_deref(), Some("v1.4.2"));
        assert_eq!(picks("1.4.2", &["v1.4.2", "v1.4.2+b"]).as_deref(), Some("v1.4.2+b"));
    }
}
