//! Fake scheduler commands for fault-injection tests: shell scripts that log their
//! arguments to `DIR/NAME.log` and then run a body that reads canned answers from `DIR`
//! (`$D` in the body).

use crate::LaunchSpec;
use shoal_core::SessionDir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A launch spec whose session dir is `root/NAME` and whose "interpreter" is `/bin/sh`.
pub fn fake_spec(root: &Path, name: &str) -> LaunchSpec {
    LaunchSpec {
        session: SessionDir::create(root.join(name)).unwrap(),
        python: "/bin/sh".into(),
        env: vec![],
        cwd: root.to_path_buf(),
        connect: None,
    }
}

pub fn fake_tool(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nD={}\necho \"$*\" >> $D/{name}.log\n{body}\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}
