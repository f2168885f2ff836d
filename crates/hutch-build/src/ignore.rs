//! `.dockerignore`: which paths of a build context a build may not see.
//!
//! Reading follows moby/patternmatcher's `ignorefile.ReadAll` and matching its
//! `MatchesOrParentMatches`: patterns are tried in order, the last one that matches a path or any
//! of its parent directories decides, and a `!` pattern re-includes. A directory that is excluded
//! can still hold re-included paths (`docs` then `!docs/README.md`), so walkers ask
//! [`DockerIgnore::may_include_below`] before skipping one.

use crate::glob::Glob;

#[derive(Debug, Clone)]
struct Pattern {
    glob: Glob,
    exclusion: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
    invalid: Vec<String>,
}

impl DockerIgnore {
    /// Parses `.dockerignore` text. Never fails: a pattern Docker would reject (a lone `!`, an
    /// unterminated `[`) matches nothing and is listed by [`DockerIgnore::invalid_patterns`] so
    /// the caller can warn.
    pub fn parse(text: &str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ignore = DockerIgnore::default();
        for line in text.lines() {
            // Only a `#` in the very first column starts a comment; `  # x` is the pattern `# x`.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exclusion, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if pattern.is_empty() {
                ignore.invalid.push(line.to_string());
                continue;
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            match Glob::ignore(&cleaned) {
                Some(glob) => ignore.patterns.push(Pattern { glob, exclusion }),
                None => ignore.invalid.push(line.to_string()),
            }
        }
        ignore
    }

    /// Whether `rel_path` (slash-separated, relative to the context root) is excluded. The
    /// context root itself never is, whatever the patterns say (Docker: "kind of silly").
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let path = clean(rel_path);
        if path == "." || path == "/" {
            return false;
        }
        let parents: Vec<&str> = path
            .match_indices('/')
            .map(|(i, _)| &path[..i])
            .filter(|p| !p.is_empty())
            .collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // An exclusion can only flip an excluded path back, and vice versa.
            if pattern.exclusion != excluded {
                continue;
            }
            if pattern.glob.matches(&path) || parents.iter().any(|p| pattern.glob.matches(p)) {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    /// Whether some `!` pattern could re-include a path below the directory `rel_dir`, so an
    /// excluded directory must still be walked. Conservative: a wildcard early in an exception
    /// makes every directory worth walking.
    pub fn may_include_below(&self, rel_dir: &str) -> bool {
        let dir = format!("{}/", clean(rel_dir));
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let prefix = p.glob.literal_prefix();
            prefix.starts_with(&dir) || dir.starts_with(prefix)
        })
    }

    /// Lines that Docker would refuse; they never match here.
    pub fn invalid_patterns(&self) -> &[String] {
        &self.invalid
    }
}

/// Go's `path.Clean`: the shortest equivalent path, purely lexically (`..` at the root stays
/// at the root for absolute paths and is kept for relative ones).
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        let cases = [
            ("", "."),
            (".", "."),
            ("./a//b/", "a/b"),
            ("a/../b", "b"),
            ("a/../../b", "../b"),
            ("/../x", "/x"),
            ("/", "/"),
            ("//a/./b/..", "/a"),
            ("../../a", "../../a"),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    /// The examples from Docker's `.dockerignore` documentation, plus the exception examples.
    #[test]
    fn documented_examples() {
        let file = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
        let cases = [
            ("somedir/temporary.txt", true),
            ("somedir/temp", true),
            ("somedir/subdir/temporary.txt", true),
            ("somedir/subdir/sub/temporary.txt", false),
            ("tempa", true),
            ("tempb/inside", true), // the parent `tempb` matches
            ("temp", false),
            ("temporary.txt", false),
            ("# comment", false),
        ];
        let ignore = DockerIgnore::parse(file);
        for (path, want) in cases {
            assert_eq!(ignore.is_excluded(path), want, "{path:?}");
        }
    }

    #[test]
    fn exceptions_last_match_wins() {
        let cases: &[(&str, &[(&str, bool)])] = &[
            (
                "*.md\n!README.md",
                &[("a.md", true), ("README.md", false), ("x.txt", false)],
            ),
            // The doc's "README-secret.md is still excluded" example.
            (
                "*.md\n!README*.md\nREADME-secret.md",
                &[
                    ("README-x.md", false),
                    ("README-secret.md", true),
                    ("a.md", true),
                ],
            ),
            // Order matters: the later `*.md` re-excludes everything.
            ("!README*.md\n*.md", &[("README.md", true)]),
            (
                "docs\n!docs/README.md",
                &[("docs", true), ("docs/a", true), ("docs/README.md", false)],
            ),
            (
                "**/*.go",
                &[("a.go", true), ("x/y/z.go", true), ("x/go", false)],
            ),
            ("vendor/**", &[("vendor", false), ("vendor/a/b", true)]),
            ("!x", &[("x", false)]), // an exception with nothing to undo
            // Parents of an exception still count: `!dir` re-includes everything below.
            ("*\n!dir", &[("dir/a/b", false), ("other/a", true)]),
        ];
        for (file, paths) in cases {
            let ignore = DockerIgnore::parse(file);
            for &(path, want) in *paths {
                assert_eq!(ignore.is_excluded(path), want, "{file:?} / {path:?}");
            }
        }
    }

    #[test]
    fn patterns_are_cleaned_and_rooted_at_the_context() {
        let cases: &[(&str, &str, bool)] = &[
            ("/secret", "secret", true),
            ("./secret/", "secret/key", true),
            ("a/../secret", "secret", true),
            ("  spaced  ", "spaced", true),
            ("! keep", "keep", false),
            ("  # not a comment", "# not a comment", true),
            ("\u{feff}bom", "bom", true),
            ("dir\r\n", "dir/x", true),
            ("/", "anything", false),
            ("*", ".", false), // the root is never excluded
        ];
        for &(file, path, want) in cases {
            assert_eq!(
                DockerIgnore::parse(file).is_excluded(path),
                want,
                "{file:?} / {path:?}"
            );
        }
    }

    #[test]
    fn invalid_patterns_are_reported_and_never_match() {
        let ignore = DockerIgnore::parse("!\n[abc\nok\n");
        assert_eq!(ignore.invalid_patterns(), ["!", "[abc"]);
        assert!(!ignore.is_excluded("[abc"));
        assert!(ignore.is_excluded("ok"));
    }

    #[test]
    fn excluded_directories_are_walked_only_when_an_exception_reaches_below() {
        let cases: &[(&str, &str, bool)] = &[
            ("docs\n!docs/README.md", "docs", true),
            ("docs\n!docs/README.md", "other", false),
            ("docs\n!docs/a/b.md", "docs/a", true),
            ("docs\n!docs/a/b.md", "docs/c", false),
            ("docs\n!docs/a*.md", "docs", true),
            ("docs\n!docs/a*.md", "docs/abc", true), // conservative: shares the literal prefix
            ("docs\n!docs/a*.md", "docs/b", false),
            ("docs\n!**/keep", "docs/deep", true),
            ("docs", "docs", false),
        ];
        for &(file, dir, want) in cases {
            let ignore = DockerIgnore::parse(file);
            assert_eq!(ignore.may_include_below(dir), want, "{file:?} / {dir:?}");
        }
    }
}
