//! The operator's command line takes the args the chart gives it.

use std::process::{Command, Output};

use crate::support;
use crate::tools::Helm;
use crate::values::{VALUE_SETS, objects, one, render, strings};

/// The args the chart gives the operator, run through the real command line with `--help`
/// last: clap refuses an unknown flag or a bad value before it prints help.
fn operator_cli(args: &[String]) -> Output {
    Command::new(support::bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run snapcrypt")
}

#[test]
fn operator_takes_the_args_the_chart_gives() {
    for (name, values) in [VALUE_SETS[0], VALUE_SETS[2]] {
        let objs = objects(&render(Helm::V3, name, values));
        let args =
            strings(&one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
        let out = operator_cli(&args);
        assert!(
            out.status.success(),
            "snapcrypt refuses the {name} chart args {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // With leader election: the operator takes the flags (--leader-elect and the Lease name the
    // chart's leader-election Role allows).
    let objs = objects(&render(Helm::V3, "ha", VALUE_SETS[1].1));
    let args =
        strings(&one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    let out = operator_cli(&args);
    assert!(
        out.status.success(),
        "snapcrypt refuses the leader-election chart args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
