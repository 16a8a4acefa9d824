//! Where the configuration file is found (pure: the environment and the file system are
//! passed in).

use std::path::{Path, PathBuf};

/// The file read when `--config` and `KUBEWIRE_CONFIG` are not given, if it exists (the
/// image's and the chart's place).
pub const SYSTEM_CONFIG: &str = "/etc/kubewire/kubewire.yaml";
/// The file read otherwise, relative to the working directory (the repository's shipped
/// configuration).
pub const LOCAL_CONFIG: &str = "config/kubewire.yaml";

/// Why a configuration path was chosen (logged at start-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// `--config`.
    Flag,
    /// `KUBEWIRE_CONFIG`.
    Environment,
    /// [`SYSTEM_CONFIG`] exists.
    System,
    /// [`LOCAL_CONFIG`], the last resort.
    Local,
}

impl ConfigOrigin {
    /// In words, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigOrigin::Flag => "--config",
            ConfigOrigin::Environment => "KUBEWIRE_CONFIG",
            ConfigOrigin::System => "default path (exists)",
            ConfigOrigin::Local => "default path",
        }
    }

    /// Whether the path was asked for (a missing file is then an error, not a reason to go
    /// without a file).
    pub fn explicit(self) -> bool {
        matches!(self, ConfigOrigin::Flag | ConfigOrigin::Environment)
    }
}

/// `--config`, else `KUBEWIRE_CONFIG` (when not empty), else [`SYSTEM_CONFIG`] when it
/// exists, else [`LOCAL_CONFIG`].
pub fn resolve_config_path(
    flag: Option<&Path>,
    env: Option<&str>,
    exists: &dyn Fn(&Path) -> bool,
) -> (PathBuf, ConfigOrigin) {
    if let Some(p) = flag {
        return (p.to_owned(), ConfigOrigin::Flag);
    }
    if let Some(e) = env.filter(|e| !e.trim().is_empty()) {
        return (PathBuf::from(e), ConfigOrigin::Environment);
    }
    if exists(Path::new(SYSTEM_CONFIG)) {
        return (PathBuf::from(SYSTEM_CONFIG), ConfigOrigin::System);
    }
    (PathBuf::from(LOCAL_CONFIG), ConfigOrigin::Local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_environment_then_the_system_path_then_the_local_one() {
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        assert_eq!(
            resolve_config_path(Some(Path::new("a.yaml")), Some("b.yaml"), &yes),
            (PathBuf::from("a.yaml"), ConfigOrigin::Flag)
        );
        assert_eq!(
            resolve_config_path(None, Some("b.yaml"), &yes),
            (PathBuf::from("b.yaml"), ConfigOrigin::Environment)
        );
        assert_eq!(
            resolve_config_path(None, Some("  "), &yes),
            (PathBuf::from(SYSTEM_CONFIG), ConfigOrigin::System)
        );
        assert_eq!(
            resolve_config_path(None, None, &no),
            (PathBuf::from(LOCAL_CONFIG), ConfigOrigin::Local)
        );
        assert!(ConfigOrigin::Flag.explicit() && ConfigOrigin::Environment.explicit());
        assert!(!ConfigOrigin::System.explicit() && !ConfigOrigin::Local.explicit());
    }
}
