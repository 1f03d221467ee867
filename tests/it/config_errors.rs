//! Promise: a bad config names the file, the table and the key, and exits 2.

use callsync::simulator::VoicegainSim;

use crate::helpers::*;

#[test]
fn a_misspelt_key_is_named_with_file_table_and_key() {
    let env = Env::new(VoicegainSim::new(20, 0), 10);
    let text_before = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text_before.replace("per_page = 10", "per_pge = 10"),
    )
    .unwrap();
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&env.config.display().to_string()), "{err}");
    assert!(err.contains("[sources.vg] key `per_pge`"), "{err}");
}

#[test]
fn an_unknown_kind_and_an_unknown_source_name_are_usage_errors() {
    let env = Env::new(VoicegainSim::new(21, 0), 10);
    let out = env.run(&["sync", "--source", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("no source named \"nope\""),
        "{}",
        text(&out)
    );
    env.write_config("[sources.x]\nkind = \"genesys\"\n", 100);
    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("[sources.x] key `kind`: unknown kind \"genesys\""),
        "{}",
        text(&out)
    );
}
