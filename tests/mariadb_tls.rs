//! TLS to MariaDB: each `ssl_mode` encrypts or refuses as the MySQL client's modes do,
//! a wrong CA or name stops before any state is written and names the settings, and a
//! client certificate logs in a user that requires one. The server proves the session
//! is encrypted (`Ssl_version`/`Ssl_cipher` of the daemon's own connections).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A MariaDB with TLS from its own test CA; its certificate names only `localhost`.
const TLS_PORT: u16 = 23076;

fn certificates() -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/tributary-mariadb-{TLS_PORT}-certs"));
    test_ca(&dir, "DNS:localhost", "", "tributary");
    dir
}

/// The connector file in `dir` with `settings` added to its `[source]`.
fn with(dir: &Path, db: &str, settings: &str) -> PathBuf {
    connector(
        dir,
        TLS_PORT,
        db,
        &format!("snapshot = \"never\"\n{settings}"),
    )
}

fn check(c: &Path) -> (i32, String) {
    let (code, out, err) = tributary(&["check", "--connector", c.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_modes_encrypt_verify_and_refuse() {
    let certs = certificates();
    let c = certs.display();
    mariadb(
        TLS_PORT,
        &format!("--ssl-ca={c}/ca.pem --ssl-cert={c}/server.pem --ssl-key={c}/server.key"),
    );
    let db = unique_db("tls");
    let mut conn = admin(TLS_PORT).await;
    exec(&mut conn, &format!("CREATE DATABASE `{db}`")).await;
    exec(
        &mut conn,
        &format!("CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v TEXT)"),
    )
    .await;
    exec(
        &mut conn,
        "CREATE USER IF NOT EXISTS 'tls_x509'@'127.0.0.1' IDENTIFIED BY 'x509' REQUIRE X509",
    )
    .await;
    exec(
        &mut conn,
        "GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'tls_x509'@'127.0.0.1'",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Another CA: stops before any state, naming the settings.
    let file = with(
        d,
        &db,
        &format!("ssl_mode = \"verify_identity\"\nssl_ca = \"{c}/other.pem\""),
    );
    let (code, out) = check(&file);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("TLS to 127.0.0.1:{TLS_PORT} (ssl_mode = \"verify_identity\", ssl_ca = \"{c}/other.pem\")")), "{out}");
    let (code, _, err) = tributary(&["run", "--connector", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Check [source] ssl_mode, ssl_ca and host"),
        "{err}"
    );
    assert!(!d.join("state").exists(), "a refused start wrote state");

    // The right CA, but the certificate does not name 127.0.0.1.
    let file = with(
        d,
        &db,
        &format!("ssl_mode = \"verify_identity\"\nssl_ca = \"{c}/ca.pem\""),
    );
    let (code, _, err) = tributary(&["run", "--connector", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("TLS to 127.0.0.1") && err.contains("verify_identity"),
        "{err}"
    );
    assert!(!d.join("state").exists(), "a refused start wrote state");

    // verify_ca checks the chain (and, through the driver, the name: tls_server_name
    // gives the certificate's); required and preferred encrypt without a CA; disabled
    // does not encrypt.
    for (settings, encrypted) in [
        (
            format!("ssl_mode = \"verify_ca\"\nssl_ca = \"{c}/ca.pem\"\ntls_server_name = \"localhost\""),
            true,
        ),
        ("ssl_mode = \"required\"".to_string(), true),
        (String::new(), true),
        ("ssl_mode = \"disabled\"".to_string(), false),
    ] {
        let (code, out) = check(&with(d, &db, &settings));
        assert_eq!(code, 0, "{settings}: {out}");
        let says = if encrypted {
            "connection encrypted (TLSv1."
        } else {
            "connection not encrypted (loopback)"
        };
        assert!(out.contains(says), "{settings}: {out}");
    }
    // A CA file that is not there is named at load time.
    let (code, out) = check(&with(
        d,
        &db,
        "ssl_mode = \"verify_ca\"\nssl_ca = \"/nonexistent/ca.pem\"",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ssl_ca = \"/nonexistent/ca.pem\""), "{out}");

    // A user that requires a client certificate: refused without one ...
    let x509 = |settings: &str| {
        let file = with(d, &db, settings);
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
            .replace("user = \"tributary\"", "user = \"tls_x509\"")
            .replace("password = \"tributary\"", "password = \"x509\"");
        std::fs::write(&file, text).unwrap();
        file
    };
    let verified = format!("ssl_mode = \"verify_identity\"\nssl_ca = \"{c}/ca.pem\"");
    let (code, out) = check(&x509(&verified));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("access denied for user 'tls_x509'"), "{out}");
    // ... and streams with it, host named by the certificate, every connection encrypted.
    let file = x509(&format!(
        "{verified}\nssl_cert = \"{c}/client.pem\"\nssl_key = \"{c}/client.key\""
    ));
    let mut daemon = spawn_daemon(&file);
    wait_streaming(&file, &mut daemon).await;
    exec(
        &mut conn,
        &format!("INSERT INTO `{db}`.t VALUES (1, 'over tls')"),
    )
    .await;
    let got = wait_for_events(&d.join("log"), 1, Duration::from_secs(30)).await;
    assert_eq!(stop(&mut daemon), 0, "{}", daemon_log(&file));
    assert_eq!(got, 1, "{}", daemon_log(&file));
    let log = daemon_log(&file);
    assert!(
        log.contains("streaming binlog") && log.contains("tls=\"TLSv1."),
        "{log}"
    );
    assert_eq!(read_events(&d.join("log"))[0]["after"]["v"], "over tls");
}
