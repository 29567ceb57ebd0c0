//! Fake scheduler commands for fault-injection tests: shell scripts that log their
//! arguments to `DIR/NAME.log` and then run a body that reads canned answers from `DIR`
//! (`$D` in the body).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
