//! Splitting an instruction's arguments the ways BuildKit does; each instruction uses one of
//! these, and none of them expands anything or (except for flags) removes quotes.

/// Instruction arguments that the Go parser splits with `[\t\v\f\r ]+`.
pub(super) fn is_arg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

/// `COPY a b  c` style: plain whitespace split, quotes are ordinary characters.
pub(super) fn split_whitespace(rest: &str) -> Vec<String> {
    rest.split(is_arg_space)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Leading `--name[=value]` words (BuildKit's `extractBuilderFlags`). Quotes and `\` are
/// processed inside flag words, a bare `--` ends the flags, and the first word not starting
/// with `--` starts the remaining text, which is returned untouched.
pub(super) fn extract_flags(line: &str) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return ("", flags);
        };
        if !line[start..].starts_with("--") {
            return (&line[start..], flags);
        }
        let mut word = String::new();
        let mut quote = None;
        while let Some((_, c)) = chars.next_if(|&(_, c)| quote.is_some() || !c.is_whitespace()) {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), _) if c == q => quote = None,
                (_, '\\') => {
                    if let Some((_, escaped)) = chars.next() {
                        word.push(escaped);
                    }
                }
                _ => word.push(c),
            }
        }
        if word == "--" {
            let rest = chars.peek().map_or("", |&(i, _)| &line[i..]);
            return (rest.trim_start(), flags);
        }
        flags.push(word);
    }
}

/// ENV and ARG words (BuildKit's `parseWords`): split on whitespace outside quotes, keeping the
/// quotes and escape characters in the words for [`crate::expand::expand`] to process later.
pub(super) fn env_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word that had quotes counts even when empty (`""`).
    let mut quoted = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if quoted || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                quoted = false;
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    quoted = true;
                }
                word.push(c);
                if c == escape {
                    // An escape character keeps the next character, even a quote, literal;
                    // one at the very end is dropped.
                    match chars.next() {
                        Some(next) => word.push(next),
                        None => {
                            word.pop();
                        }
                    }
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                word.push(c);
                // The escape character works in double quotes only.
                if c == escape && q != '\'' {
                    match chars.next() {
                        Some(next) => word.push(next),
                        None => {
                            word.pop();
                        }
                    }
                }
            }
        }
    }
    if quoted || !word.is_empty() {
        words.push(word);
    }
    words
}

/// Whether a RUN/COPY/ADD line uses a heredoc: an argument word (quotes kept, split on
/// unquoted whitespace) of the form `[n]<<[-]NAME`. `<<<`, `<< EOF` and `"<<EOF"` are not.
#[cfg(test)]
pub(super) fn has_heredoc(rest: &str) -> bool {
    !heredoc_words(rest).is_empty()
}

/// A heredoc a RUN/COPY/ADD line opens, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeredocWord {
    /// The word as written (`<<-"EOF"`), as it stands in the instruction's text.
    pub word: String,
    /// The delimiter, quotes removed.
    pub name: String,
    /// No quotes in the delimiter: COPY expands build variables in the body.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the delimiter line.
    pub chomp: bool,
}

/// The longest heredoc delimiter accepted.
pub(super) const MAX_HEREDOC_NAME: usize = 64;

/// The heredocs a line opens, in order (BuildKit's `[n]<<[-]NAME` words). A delimiter must be
/// a plain word (letters, digits, `_`, `.`, `-`; not `.` or `..`): COPY names its file after
/// it, so anything else (a `/`, `$`, a control character) is refused with a clear error
/// rather than guessed at.
pub(super) fn heredoc_words(rest: &str) -> Vec<Result<HeredocWord, String>> {
    raw_words(rest)
        .into_iter()
        .filter_map(|word| {
            let after_fd = word.trim_start_matches(|c: char| c.is_ascii_digit());
            let after = after_fd.strip_prefix("<<")?;
            let (chomp, quoted_name) = match after.strip_prefix('-') {
                Some(n) => (true, n),
                None => (false, after),
            };
            let quoted_name = quoted_name.trim_start();
            if quoted_name.is_empty() || quoted_name.contains('<') {
                return None;
            }
            let expand = !quoted_name.contains(['"', '\'', '\\']);
            let name: String = quoted_name
                .chars()
                .filter(|c| !matches!(c, '"' | '\'' | '\\'))
                .collect();
            let valid = !name.is_empty()
                && name.len() <= MAX_HEREDOC_NAME
                && name != "."
                && name != ".."
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            Some(if valid {
                Ok(HeredocWord {
                    word,
                    name,
                    expand,
                    chomp,
                })
            } else {
                Err(format!(
                    "invalid heredoc delimiter {quoted_name:?}: a delimiter is 1 to \
                     {MAX_HEREDOC_NAME} letters, digits, '_', '.' or '-'"
                ))
            })
        })
        .collect()
}

/// Shell-like words with quotes and backslashes kept verbatim.
fn raw_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("a b", "a b", &[]),
            ("--from=x a b", "a b", &["--from=x"]),
            ("  --from=x   --link  a", "a", &["--from=x", "--link"]),
            ("--chown=\"1 2\" a", "a", &["--chown=1 2"]),
            ("--chown='a\\b' a", "a", &["--chown=ab"]),
            ("--a\\ b c", "c", &["--a b"]),
            ("--x=1 -- --not-a-flag b", "--not-a-flag b", &["--x=1"]),
            ("--only", "", &["--only"]),
            ("-single a", "-single a", &[]),
            ("[\"a\", \"b\"]", "[\"a\", \"b\"]", &[]),
            ("--from=x [\"a\", \"b\"]", "[\"a\", \"b\"]", &["--from=x"]),
        ];
        for &(line, rest, flags) in cases {
            assert_eq!(
                extract_flags(line),
                (rest, flags.iter().map(|f| f.to_string()).collect()),
                "{line:?}"
            );
        }
    }

    #[test]
    fn env_words_keep_quotes_and_escapes() {
        let cases: &[(&str, char, &[&str])] = &[
            ("a=1 b=2", '\\', &["a=1", "b=2"]),
            ("a=\"x y\" b='p q'", '\\', &["a=\"x y\"", "b='p q'"]),
            ("a=x\\ y", '\\', &["a=x\\ y"]),
            ("a=\"x\\\" y\"", '\\', &["a=\"x\\\" y\""]),
            ("a='x\\' b", '\\', &["a='x\\'", "b"]),
            ("a=\"\"", '\\', &["a=\"\""]),
            ("\"\"", '\\', &["\"\""]),
            ("a=x`  y", '`', &["a=x` ", "y"]),
            ("  a   b  ", '\\', &["a", "b"]),
            ("a=x\\", '\\', &["a=x"]),
        ];
        for &(rest, escape, want) in cases {
            assert_eq!(env_words(rest, escape), want, "{rest:?}");
        }
    }

    #[test]
    fn heredocs() {
        let cases = [
            ("cat <<EOF", true),
            ("<<EOF", true),
            ("cat <<-EOF", true),
            ("3<<EOF cat", true),
            ("cat <<\"EOF\"", true),
            ("cat <<'EOF'", true),
            ("cat << EOF", false),
            ("cat <<<word", false),
            ("echo \"<<EOF\"", false),
            ("echo '<<EOF'", false),
            ("echo \\<<EOF", false),
            ("echo $((1<<3))", false),
            ("[\"sh\", \"-c\", \"cat <<EOF\"]", false),
        ];
        for (rest, want) in cases {
            assert_eq!(has_heredoc(rest), want, "{rest:?}");
        }
    }

    #[test]
    fn heredoc_delimiters() {
        let ok = |word: &str, name: &str, expand: bool, chomp: bool| {
            Ok(HeredocWord {
                word: word.into(),
                name: name.into(),
                expand,
                chomp,
            })
        };
        assert_eq!(heredoc_words("<<EOF"), [ok("<<EOF", "EOF", true, false)]);
        assert_eq!(
            heredoc_words("cat <<-'END' > f"),
            [ok("<<-'END'", "END", false, true)]
        );
        assert_eq!(
            heredoc_words("--chmod=755 <<\"a.sh\" 2<<B /dst/"),
            [
                ok("<<\"a.sh\"", "a.sh", false, false),
                ok("2<<B", "B", true, false)
            ]
        );
        for hostile in [
            "<<../x",
            "<<a/b",
            "<<$(id)",
            "<<'..'",
            "<<\"\"",
            "<<a\u{7}b",
        ] {
            let got = heredoc_words(hostile);
            assert!(
                matches!(got.as_slice(), [Err(e)] if e.contains("invalid heredoc delimiter")),
                "{hostile:?}: {got:?}"
            );
        }
        let long = format!("<<{}", "x".repeat(MAX_HEREDOC_NAME + 1));
        assert!(heredoc_words(&long)[0].is_err());
    }
}
