//! The config-only instructions (LABEL, EXPOSE, STOPSIGNAL, VOLUME, HEALTHCHECK, SHELL,
//! ONBUILD, MAINTAINER) applied to a stage's image config, in the shapes Docker and buildah
//! write: `Labels`, `ExposedPorts` and `Volumes` as maps, `Healthcheck` with nanosecond
//! durations, `Shell` and `OnBuild` as string lists, MAINTAINER as the image's `author`.

use serde_json::{Map, Value, json};

use super::state::State;
use crate::dockerfile::{Command, Setting};
use crate::error::BuildError;

pub(super) enum Error {
    Build(BuildError),
    /// A value that is wrong once expanded: reported at the instruction's line.
    Invalid(String),
}

impl From<BuildError> for Error {
    fn from(e: BuildError) -> Self {
        Error::Build(e)
    }
}

/// Expands an instruction's words the way Docker does for it.
pub(super) type Expander<'a> = dyn Fn(&[String]) -> Result<Vec<String>, BuildError> + 'a;

/// Applies `setting`; `expand` expands words the way Docker does for that instruction.
pub(super) fn apply(
    state: &mut State,
    setting: &Setting,
    expand: &Expander<'_>,
) -> Result<(), Error> {
    let config = &mut state.config["config"];
    match setting {
        Setting::Labels(pairs) => {
            for (key, value) in pairs {
                let kv = expand(&[key.clone(), value.clone()])?;
                if kv[0].is_empty() {
                    return Err(Error::Invalid("LABEL names can not be blank".into()));
                }
                map_of(config, "Labels").insert(kv[0].clone(), json!(kv[1]));
            }
        }
        Setting::Expose(ports) => {
            for port in expand(ports)? {
                for word in port.split_whitespace() {
                    let normal = exposed_port(word).ok_or_else(|| {
                        Error::Invalid(format!(
                            "EXPOSE {word}: expected PORT[/PROTOCOL] or START-END[/PROTOCOL], \
                             with tcp, udp or sctp"
                        ))
                    })?;
                    map_of(config, "ExposedPorts").insert(normal, json!({}));
                }
            }
        }
        Setting::StopSignal(signal) => {
            let signal = expand(std::slice::from_ref(signal))?.remove(0);
            if !valid_signal(&signal) {
                return Err(Error::Invalid(format!(
                    "STOPSIGNAL {signal}: not a signal name (SIGTERM, TERM) or number (1 to 64)"
                )));
            }
            config["StopSignal"] = json!(signal);
        }
        Setting::Volumes(volumes) => {
            for volume in expand(volumes)? {
                if volume.trim().is_empty() {
                    return Err(Error::Invalid(
                        "VOLUME specified can not be an empty string".into(),
                    ));
                }
                map_of(config, "Volumes").insert(volume, json!({}));
            }
        }
        Setting::Healthcheck(None) => {
            config["Healthcheck"] = json!({"Test": ["NONE"]});
        }
        Setting::Healthcheck(Some(check)) => {
            let test = match &check.test {
                Command::Shell(text) => json!(["CMD-SHELL", text]),
                Command::Exec(argv) => {
                    let mut test = vec!["CMD".to_string()];
                    test.extend(argv.iter().cloned());
                    json!(test)
                }
            };
            let mut health = Map::new();
            health.insert("Test".into(), test);
            for (key, value) in [
                ("Interval", check.interval),
                ("Timeout", check.timeout),
                ("StartPeriod", check.start_period),
                ("StartInterval", check.start_interval),
                ("Retries", check.retries),
            ] {
                if value != 0 {
                    health.insert(key.into(), json!(value));
                }
            }
            config["Healthcheck"] = Value::Object(health);
        }
        Setting::Shell(shell) => config["Shell"] = json!(shell),
        Setting::OnBuild(trigger) => {
            if !config["OnBuild"].is_array() {
                config["OnBuild"] = json!([]);
            }
            if let Some(list) = config["OnBuild"].as_array_mut() {
                list.push(json!(trigger));
            }
        }
        Setting::Maintainer(author) => state.config["author"] = json!(author),
    }
    Ok(())
}

/// The object under `key` in `config`, made if missing (or not an object).
fn map_of<'a>(config: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !config[key].is_object() {
        config[key] = json!({});
    }
    match config[key].as_object_mut() {
        Some(map) => map,
        None => unreachable!("just made an object"),
    }
}

/// `80` → `80/tcp`, `8000-8002` → `8000-8002/tcp`; a protocol stays as written (`53/UDP`),
/// as buildah keeps it; `None` if invalid.
fn exposed_port(word: &str) -> Option<String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (word, "tcp".to_string()),
    };
    if !["tcp", "udp", "sctp"].contains(&proto.to_ascii_lowercase().as_str()) {
        return None;
    }
    let port = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0);
    match ports.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            (a <= b).then(|| format!("{a}-{b}/{proto}"))
        }
        None => port(ports).map(|p| format!("{p}/{proto}")),
    }
}

fn valid_signal(signal: &str) -> bool {
    if let Ok(n) = signal.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = signal.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    // RTMIN, RTMIN+3, RTMAX-2.
    let rt = |base: &str| {
        name.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(['+', '-'])
                    .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 30))
        })
    };
    rt("RTMIN") || rt("RTMAX")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_signals() {
        for (word, want) in [
            ("80", Some("80/tcp")),
            ("53/UDP", Some("53/UDP")),
            ("8000-8002", Some("8000-8002/tcp")),
            ("9/sctp", Some("9/sctp")),
            ("0", None),
            ("70000", None),
            ("80/icmp", None),
            ("9-3", None),
            ("x", None),
        ] {
            assert_eq!(exposed_port(word).as_deref(), want, "{word}");
        }
        for (signal, ok) in [
            ("SIGTERM", true),
            ("term", true),
            ("9", true),
            ("SIGRTMIN+3", true),
            ("0", false),
            ("SIGNOPE", false),
            ("", false),
        ] {
            assert_eq!(valid_signal(signal), ok, "{signal}");
        }
    }
}
