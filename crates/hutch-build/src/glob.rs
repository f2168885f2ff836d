//! The two wildcard dialects Docker uses on paths, behind one matcher:
//!
//! - [`Glob::component`]: Go's `filepath.Match`, used by `COPY`/`ADD` sources one path component
//!   at a time (`*`, `?`, `[...]`, `\` escapes; `**` is just two `*`).
//! - [`Glob::ignore`]: moby/patternmatcher, used by `.dockerignore` on whole slash-separated
//!   paths. It translates patterns to regular expressions with a few shortcuts (exact, prefix,
//!   suffix) whose quirks are reproduced here rather than "fixed", so a `.dockerignore` excludes
//!   the same files under Hutch as under Docker.

use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `?`: one character other than `/`.
    Quest,
    /// `[...]`: unlike `*` and `?`, a class may match `/` (as in both Go implementations).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// patternmatcher's `**` followed by more pattern: the regex `(.*/)?`.
    AnyDirs,
    /// patternmatcher's trailing `**` after other wildcards: the regex `.*`.
    AnyTail,
}

/// How patternmatcher decided to match a pattern; the shortcuts behave differently from the
/// regex they stand in for (`**foo` is a plain suffix test, so it matches `xfoo`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Exact,
    Prefix,
    Suffix,
    Tokens,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    text: String,
    mode: Mode,
    tokens: Vec<Token>,
}

impl Glob {
    /// A `filepath.Match` pattern for one path component; `None` if Go would reject it.
    pub(crate) fn component(pattern: &str) -> Option<Glob> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Quest),
                '[' => {
                    let (class, next) = parse_class(&chars, i)?;
                    tokens.push(class);
                    i = next;
                    continue;
                }
                // Go rejects a trailing backslash as ErrBadPattern.
                '\\' => {
                    i += 1;
                    tokens.push(Token::Lit(*chars.get(i)?));
                }
                c => tokens.push(Token::Lit(c)),
            }
            i += 1;
        }
        Some(Glob {
            text: pattern.to_string(),
            mode: Mode::Tokens,
            tokens,
        })
    }

    /// A cleaned `.dockerignore` pattern (without its `!`), compiled as patternmatcher does;
    /// `None` for a pattern Docker rejects (an unterminated `[`).
    pub(crate) fn ignore(pattern: &str) -> Option<Glob> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut mode = Mode::Exact;
        let mut i = 0;
        let mut first = true;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    i += 2;
                    // `**/` is treated as `**`.
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        if mode == Mode::Exact {
                            mode = Mode::Prefix;
                        } else {
                            tokens.push(Token::AnyTail);
                            mode = Mode::Tokens;
                        }
                    } else {
                        tokens.push(Token::AnyDirs);
                        mode = Mode::Tokens;
                    }
                    // A leading `**` makes the whole pattern a suffix test unless a later
                    // wildcard switches it back to the regex.
                    if first {
                        mode = Mode::Suffix;
                    }
                    first = false;
                    continue;
                }
                '*' => {
                    tokens.push(Token::Star);
                    mode = Mode::Tokens;
                }
                '?' => {
                    tokens.push(Token::Quest);
                    mode = Mode::Tokens;
                }
                '\\' => match chars.get(i + 1) {
                    Some(&c) => {
                        tokens.push(Token::Lit(c));
                        mode = Mode::Tokens;
                        i += 1;
                    }
                    None => tokens.push(Token::Lit('\\')),
                },
                '[' => {
                    let (class, next) = parse_class(&chars, i)?;
                    tokens.push(class);
                    mode = Mode::Tokens;
                    i = next;
                    first = false;
                    continue;
                }
                ']' => {
                    tokens.push(Token::Lit(']'));
                    mode = Mode::Tokens;
                }
                c => tokens.push(Token::Lit(c)),
            }
            first = false;
            i += 1;
        }
        Some(Glob {
            text: pattern.to_string(),
            mode,
            tokens,
        })
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match self.mode {
            Mode::Exact => path == self.text,
            Mode::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Mode::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/') == Some(path)
            }
            Mode::Tokens => {
                let chars: Vec<char> = path.chars().collect();
                Matcher {
                    tokens: &self.tokens,
                    chars: &chars,
                    failed: HashSet::new(),
                }
                .run(0, 0)
            }
        }
    }

    /// The literal text before the first wildcard or escape: every path the pattern can match
    /// starts with it (used to decide whether an excluded directory needs walking).
    pub(crate) fn literal_prefix(&self) -> &str {
        let end = self
            .text
            .find(['*', '?', '[', '\\'])
            .unwrap_or(self.text.len());
        &self.text[..end]
    }
}

/// Parses `[...]` starting at `chars[start] == '['`; returns the class and the index after `]`.
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let lo = match *chars.get(i)? {
            // Go: an empty class, or `-` / `]` where a character is expected, is a bad pattern.
            ']' if !ranges.is_empty() => return Some((Token::Class { negated, ranges }, i + 1)),
            ']' | '-' => return None,
            '\\' => {
                i += 1;
                *chars.get(i)?
            }
            c => c,
        };
        i += 1;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
            i += 1;
            hi = match chars[i] {
                '\\' => {
                    i += 1;
                    *chars.get(i)?
                }
                c => c,
            };
            i += 1;
        }
        ranges.push((lo, hi));
    }
}

/// Backtracking over (token, char) positions, remembering failures so `*a*a*a*b` stays
/// quadratic instead of exponential.
struct Matcher<'a> {
    tokens: &'a [Token],
    chars: &'a [char],
    failed: HashSet<(usize, usize)>,
}

impl Matcher<'_> {
    fn run(&mut self, t: usize, c: usize) -> bool {
        if self.failed.contains(&(t, c)) {
            return false;
        }
        let ok = self.step(t, c);
        if !ok {
            self.failed.insert((t, c));
        }
        ok
    }

    fn step(&mut self, t: usize, c: usize) -> bool {
        let Some(token) = self.tokens.get(t) else {
            return c == self.chars.len();
        };
        let ch = self.chars.get(c).copied();
        match token {
            Token::Lit(l) => ch == Some(*l) && self.run(t + 1, c + 1),
            Token::Quest => ch.is_some_and(|ch| ch != '/') && self.run(t + 1, c + 1),
            Token::Class { negated, ranges } => {
                ch.is_some_and(|ch| ranges.iter().any(|&(lo, hi)| lo <= ch && ch <= hi) != *negated)
                    && self.run(t + 1, c + 1)
            }
            Token::Star => {
                self.run(t + 1, c) || (ch.is_some_and(|ch| ch != '/') && self.run(t, c + 1))
            }
            Token::AnyTail => (c..=self.chars.len()).any(|k| self.run(t + 1, k)),
            Token::AnyDirs => {
                self.run(t + 1, c)
                    || (c..self.chars.len())
                        .filter(|&k| self.chars[k] == '/')
                        .any(|k| self.run(t + 1, k + 1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_patterns_follow_go_filepath_match() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "abc", true),
            ("*", ".hidden", true), // unlike a shell, `*` matches dotfiles
            ("*", "", true),
            ("*.txt", "a.txt", true),
            ("*.txt", "a.txt.bak", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[^abc]x", "dx", true),
            ("[^abc]x", "ax", false),
            ("[a-c]", "b", true),
            ("[a-c]", "d", false),
            ("[!a]", "!", true), // `!` is not negation in Go
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("**", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ];
        for &(pattern, name, want) in cases {
            let glob = Glob::component(pattern).unwrap_or_else(|| panic!("{pattern} invalid"));
            assert_eq!(glob.matches(name), want, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for pattern in ["[abc", "[]", "[^]", "x\\", "[a-"] {
            assert_eq!(Glob::component(pattern), None, "{pattern:?}");
        }
        assert_eq!(Glob::ignore("[abc"), None);
        // A trailing backslash is literal for patternmatcher.
        assert!(Glob::ignore("x\\").is_some_and(|g| g.matches("x\\")));
    }

    #[test]
    fn ignore_patterns_follow_patternmatcher() {
        let cases: &[(&str, &str, bool)] = &[
            ("foo", "foo", true),
            ("foo", "foo/bar", false), // parents are the caller's job
            ("*", "foo", true),
            ("*", "foo/bar", false),
            ("*/temp*", "somedir/temporary.txt", true),
            ("*/temp*", "somedir/sub/temp", false),
            ("*/*/temp*", "somedir/subdir/temporary.txt", true),
            ("temp?", "temp1", true),
            ("temp?", "temp", false),
            ("**/*.go", "a.go", true),
            ("**/*.go", "x/y/a.go", true),
            ("**/*.go", "x/y/a.goo", false),
            ("**", "anything/at/all", true),
            ("foo/**", "foo/x/y", true),
            ("foo/**", "foo", false),
            ("foo**", "foobar/baz", true), // prefix shortcut
            ("**/foo", "foo", true),
            ("**/foo", "a/b/foo", true),
            ("**/foo", "a/xfoo", false),
            ("**foo", "a/xfoo", true), // suffix shortcut, not a regex
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/xb", false),
            ("a/**/*/b", "a/x/b", true),
            ("**/**", "x", true),
            ("file[0-9]", "file7", true),
            ("file[0-9]", "filex", false),
            ("file.txt", "fileXtxt", false), // `.` is literal
            ("a+(b)", "a+(b)", true),
            ("\\*x", "*x", true),
            ("\\*x", "ax", false),
        ];
        for &(pattern, path, want) in cases {
            let glob = Glob::ignore(pattern).unwrap_or_else(|| panic!("{pattern} invalid"));
            assert_eq!(glob.matches(path), want, "{pattern:?} vs {path:?}");
        }
    }

    #[test]
    fn pathological_stars_stay_fast() {
        let glob = Glob::component(&"*a".repeat(20)).unwrap();
        assert!(!glob.matches(&format!("{}b", "a".repeat(60))));
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        for (pattern, want) in [("docs/a*.md", "docs/a"), ("docs/x", "docs/x"), ("**/k", "")] {
            assert_eq!(Glob::ignore(pattern).unwrap().literal_prefix(), want);
        }
    }
}
