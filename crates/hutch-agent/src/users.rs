//! Resolving `user` specs (`name`, `uid`, `name:group`, `uid:gid`) against the image's
//! `/etc/passwd` and `/etc/group`, the way Docker does. The agent is static and has no NSS,
//! and the files to consult are the sandbox's own anyway.

use std::fs;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
    pub name: Option<String>,
}

impl Identity {
    pub fn root() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: Some("/root".into()),
            name: Some("root".into()),
        }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn passwd() -> Vec<PasswdEntry> {
    let text = fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn groups() -> Vec<GroupEntry> {
    let text = fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves a user spec; the error says which part named nobody.
pub fn resolve(spec: &str) -> Result<Identity, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Identity::root());
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd();
    let (uid, mut gid, home, name) = match user_part.parse::<u32>() {
        Ok(uid) => match users.iter().find(|u| u.uid == uid) {
            Some(u) => (uid, u.gid, Some(u.home.clone()), Some(u.name.clone())),
            None => (uid, 0, None, None),
        },
        Err(_) => match users.iter().find(|u| u.name == user_part) {
            Some(u) => (u.uid, u.gid, Some(u.home.clone()), Some(u.name.clone())),
            None => {
                return Err(format!(
                    "unknown user {user_part:?}: no such entry in /etc/passwd"
                ));
            }
        },
    };
    let all_groups = groups();
    if let Some(group) = group_part {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match all_groups.iter().find(|g| g.name == group) {
                Some(g) => g.gid,
                None => {
                    return Err(format!(
                        "unknown group {group:?}: no such entry in /etc/group"
                    ));
                }
            },
        };
    }
    let mut supplementary = vec![gid];
    if group_part.is_none()
        && let Some(name) = &name
    {
        for g in &all_groups {
            if g.members.iter().any(|m| m == name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home,
        name,
    })
}
