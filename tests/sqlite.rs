//! sqlite3 on a home database: 200 transactions (journal file created, synced and deleted each time,
//! POSIX record locks on the database), then integrity check and dump, compared with a native run and
//! checked from outside.

use homeward::{require_tools, skip_unless_root, Compare, Hosts, Times};

/// A deterministic workload: a schema, then 200 `BEGIN … COMMIT` transactions that insert, update and
/// delete, with rows large enough to need overflow pages.
fn workload() -> String {
    let mut sql = String::from(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL, note TEXT);\n\
         CREATE INDEX accounts_owner ON accounts(owner);\n\
         CREATE TABLE ledger(seq INTEGER PRIMARY KEY, account INTEGER, delta INTEGER);\n",
    );
    for i in 0..200u32 {
        let note = format!("transaction {i} ").repeat(1 + (i as usize % 9) * 40);
        sql += "BEGIN;\n";
        sql += &format!(
            "INSERT INTO accounts(owner, balance, note) VALUES('owner-{}', {}, '{note}');\n",
            i % 17,
            i * 37 % 1000
        );
        sql += &format!("UPDATE accounts SET balance = balance + {i} WHERE id % 7 = {};\n", i % 7);
        sql += &format!(
            "INSERT INTO ledger(account, delta) SELECT id, {i} FROM accounts WHERE id % 11 = {};\n",
            i % 11
        );
        if i % 10 == 9 {
            sql += &format!("DELETE FROM accounts WHERE id = {};\n", i - 5);
        }
        sql += "COMMIT;\n";
    }
    sql
}

#[test]
fn two_hundred_transactions_then_integrity_and_dump() {
    skip_unless_root!();
    require_tools!("sqlite3");
    let hosts = Hosts::start();
    hosts.write("db/workload.sql", workload());
    let native = hosts.native_copy();

    hosts
        .cmd(&["sqlite3", "bank.db", ".read workload.sql"])
        .cwd("db")
        .check_with(&native, &Compare::new().stderr());
    let integrity = hosts.cmd(&["sqlite3", "bank.db", "PRAGMA integrity_check;"]).cwd("db").check(&native);
    assert_eq!(integrity.native.stdout(), "ok\n", "the native run itself is broken: {}", integrity.native);
    let counts = "SELECT count(*), sum(balance), sum(length(note)) FROM accounts; SELECT count(*), sum(delta) FROM ledger;";
    hosts.cmd(&["sqlite3", "bank.db", counts]).cwd("db").check(&native);
    let dump = hosts.cmd(&["sqlite3", "bank.db", ".dump"]).cwd("db").check(&native);
    assert!(dump.native.stdout.len() > 100_000, "the workload should be large: {}", dump.native);

    // A second process opening the database afterwards (hot-journal check, shared then exclusive locks).
    hosts
        .cmd(&["sqlite3", "bank.db", "UPDATE accounts SET balance = 0 WHERE owner = 'owner-3'; VACUUM;"])
        .cwd("db")
        .check(&native);
    hosts
        .cmd(&["sqlite3", "bank.db", "PRAGMA integrity_check; SELECT sum(balance) FROM accounts;"])
        .cwd("db")
        .check(&native);

    // From outside: the database at home is intact, equals the native one, and no journal is left.
    let outside =
        hosts.cmd(&["sqlite3", "-readonly", "bank.db", "PRAGMA integrity_check;"]).cwd("db").outside();
    assert_eq!(outside.stdout(), "ok\n", "{outside}");
    let home_dump = hosts.cmd(&["sqlite3", "-readonly", "bank.db", ".dump"]).cwd("db").outside();
    let native_dump = hosts.cmd(&["sqlite3", "-readonly", "bank.db", ".dump"]).cwd("db").native(&native);
    homeward::compare(&native_dump, &home_dump);
    assert!(!hosts.exists("db/bank.db-journal"), "a journal was left at home");
    hosts.assert_home_matches(&native, Times::Ignore);
}
