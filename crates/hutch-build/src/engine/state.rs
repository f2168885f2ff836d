//! A stage's result so far: its layers, its image config, and the cache key over its steps.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use hutch_store::Digest;

use super::CACHE_REPO;

#[derive(Clone, Debug)]
pub(super) struct Layer {
    pub(super) diff_id: Digest,
    pub(super) blob: Digest,
    pub(super) media_type: String,
    pub(super) size: u64,
}

/// A stage's result so far.
#[derive(Clone, Debug)]
pub(super) struct State {
    pub(super) layers: Vec<Layer>,
    /// The whole OCI image config (its `config` object is what instructions change).
    pub(super) config: Value,
    pub(super) key: String,
    /// Env keys set by this stage: re-setting one updates it in place, while re-setting an
    /// inherited one moves it to the end (buildah's order).
    pub(super) stage_env: Vec<String>,
    /// Whether this stage set CMD: a later ENTRYPOINT clears only an inherited CMD.
    pub(super) cmd_set: bool,
}

impl State {
    pub(super) fn scratch() -> State {
        State {
            layers: Vec::new(),
            config: json!({"architecture": "amd64", "os": "linux", "config": {}}),
            key: hex::encode(Sha256::digest(b"scratch")),
            stage_env: Vec::new(),
            cmd_set: false,
        }
    }

    /// `path` from the working directory (an absolute path stays as it is).
    pub(super) fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.workdir().trim_end_matches('/'))
        }
    }

    /// The shell of shell-form RUN, CMD and ENTRYPOINT: the config's `Shell` (SHELL), else
    /// `/bin/sh -c`.
    pub(super) fn shell(&self) -> Vec<String> {
        let shell = self.config_strings("Shell");
        if shell.is_empty() {
            vec!["/bin/sh".to_string(), "-c".to_string()]
        } else {
            shell
        }
    }

    pub(super) fn env(&self) -> Vec<String> {
        self.config_strings("Env")
    }

    /// The strings of the config's array field `key` (`Env`, `Shell`, `OnBuild`, ...); none
    /// when it is absent or not an array, and anything but strings skipped.
    pub(super) fn config_strings(&self, key: &str) -> Vec<String> {
        self.config["config"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn env_lookup(&self, name: &str) -> Option<String> {
        self.env().into_iter().rev().find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    pub(super) fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env();
        let entry = format!("{key}={value}");
        let position = env.iter().position(|kv| kv.split('=').next() == Some(key));
        match position {
            Some(i) if self.stage_env.iter().any(|k| k == key) => env[i] = entry,
            _ => {
                env.retain(|kv| kv.split('=').next() != Some(key));
                env.push(entry);
                self.stage_env.push(key.to_string());
            }
        }
        self.config["config"]["Env"] = json!(env);
    }

    pub(super) fn workdir(&self) -> String {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }

    pub(super) fn chain(&mut self, what: &[u8]) {
        let mut h = Sha256::new();
        h.update(self.key.as_bytes());
        h.update([0]);
        h.update(what);
        self.key = hex::encode(h.finalize());
    }

    pub(super) fn cache_name(&self) -> String {
        format!("{CACHE_REPO}:{}", self.key)
    }
}
