//! SCRAM tests: RFC 7677 vectors for both sides, client against server, pass-through,
//! unknown users and malformed messages.

use super::*;

const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> ScramVerifier {
    ScramVerifier::from_password("pencil", &unb64(RFC_SALT).unwrap(), 4096)
}

fn verifier(password: &str) -> ScramVerifier {
    ScramVerifier::from_password(password, b"0123456789abcdef", 4096)
}

/// Runs a full exchange; returns the server (for its client key) and the outcome.
fn exchange(server: &mut ScramServer, client: &mut ScramClient) -> Result<(), AuthError> {
    let server_first = server.client_first(&client.client_first())?;
    let client_final = client.server_first(server_first)?;
    let server_final = server.client_final(&client_final)?;
    client.server_final(&server_final)
}

fn password(p: &str) -> ScramCredential {
    ScramCredential::Password(p.to_owned())
}

#[test]
fn client_reproduces_rfc7677_exchange() {
    let mut client = ScramClient::with_nonce(password("pencil"), "user", RFC_CLIENT_NONCE.into());
    assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
    let client_final = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(client_final).unwrap(), RFC_CLIENT_FINAL);
    client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn server_reproduces_rfc7677_exchange() {
    let stored = rfc_verifier();
    let secret = ScramSecret::Verifier(&stored);
    let mut server = ScramServer::with_nonce("user", Some(secret), RFC_SERVER_NONCE.into());
    let server_first = server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(server_first, RFC_SERVER_FIRST.as_bytes());
    let server_final = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
    // The recovered ClientKey hashes to the StoredKey.
    let client_key = server.client_key().unwrap();
    assert_eq!(sha256(&client_key), rfc_verifier().stored_key);
}

#[test]
fn client_first_message_has_empty_user_and_random_nonce() {
    let a = String::from_utf8(ScramClient::new(password("x")).client_first()).unwrap();
    let b = String::from_utf8(ScramClient::new(password("x")).client_first()).unwrap();
    let nonce = a.strip_prefix("n,,n=,r=").expect("shape");
    assert_eq!(nonce.len(), 24);
    assert!(is_printable(nonce));
    assert_ne!(a, b);
}

#[test]
fn right_password_with_verifier_succeeds() {
    let stored = verifier("pw");
    let mut server = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    let mut client = ScramClient::new(password("pw"));
    exchange(&mut server, &mut client).unwrap();
    assert!(server.client_key().is_some());
    assert_eq!(server.verifier(), Some(&verifier("pw")));
}

#[test]
fn right_password_with_plaintext_secret_succeeds() {
    let mut server = ScramServer::new("alice", Some(ScramSecret::Password("pw")));
    let mut client = ScramClient::new(password("pw"));
    exchange(&mut server, &mut client).unwrap();
    let v = server.verifier().expect("computed verifier");
    assert_eq!(sha256(&server.client_key().unwrap()), v.stored_key);
}

#[test]
fn non_ascii_password_is_saslprepped_on_both_sides() {
    // U+2168 ROMAN NUMERAL NINE folds to "IX" under NFKC; U+00AD maps to nothing.
    let stored = ScramVerifier::from_password("IXx p\u{00E4}ss", b"salt", 4096);
    let mut server = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    let mut client = ScramClient::new(password("\u{2168}\u{00AD}x p\u{00E4}ss"));
    exchange(&mut server, &mut client).unwrap();
}

#[test]
fn wrong_password_is_rejected() {
    let stored = verifier("pw");
    for secret in [ScramSecret::Verifier(&stored), ScramSecret::Password("pw")] {
        let mut server = ScramServer::new("alice", Some(secret));
        let mut client = ScramClient::new(password("wrong"));
        assert_eq!(
            exchange(&mut server, &mut client),
            Err(AuthError::WrongPassword)
        );
        assert!(server.client_key().is_none());
        // The exchange is dead afterwards.
        assert!(matches!(
            server.client_final(b"c=biws,r=x,p=AAAA"),
            Err(AuthError::Protocol(_))
        ));
    }
}

fn server_first_of(server: &mut ScramServer) -> String {
    let first = server.client_first(b"n,,n=,r=clientnonce").unwrap();
    String::from_utf8(first.to_vec()).unwrap()
}

/// The `s=...,i=...` part of a server-first-message.
fn salt_and_iterations(server_first: &str) -> String {
    server_first.split_once(",s=").unwrap().1.to_owned()
}

#[test]
fn unknown_user_runs_full_exchange_then_fails() {
    let mut server = ScramServer::new("ghost", None);
    let mut client = ScramClient::new(password("anything"));
    assert_eq!(
        exchange(&mut server, &mut client),
        Err(AuthError::WrongPassword)
    );
    assert!(server.client_key().is_none());
    assert!(server.verifier().is_none());
}

#[test]
fn unknown_user_fake_salt_is_stable_per_user_and_realistic() {
    let first = server_first_of(&mut ScramServer::new("ghost", None));
    let again = server_first_of(&mut ScramServer::new("ghost", None));
    let other = server_first_of(&mut ScramServer::new("phantom", None));
    assert_eq!(salt_and_iterations(&first), salt_and_iterations(&again));
    assert_ne!(salt_and_iterations(&first), salt_and_iterations(&other));
    assert_ne!(first, again, "server nonce must still be fresh");

    // Same shape as a real user's: 16-byte salt, 4096 iterations, same nonce length.
    let stored = verifier("pw");
    let real = server_first_of(&mut ScramServer::new(
        "alice",
        Some(ScramSecret::Verifier(&stored)),
    ));
    let (fake_salt, fake_iter) = salt_and_iterations(&first)
        .split_once(",i=")
        .map(|(s, i)| (unb64(s).unwrap(), i.to_owned()))
        .unwrap();
    assert_eq!(fake_salt.len(), 16);
    assert_eq!(fake_iter, "4096");
    assert_eq!(first.len(), real.len());
}

#[test]
fn plaintext_secret_salt_is_stable_like_an_unknown_users() {
    let secret = || Some(ScramSecret::Password("pw"));
    let a = server_first_of(&mut ScramServer::new("alice", secret()));
    let b = server_first_of(&mut ScramServer::new("alice", secret()));
    assert_eq!(salt_and_iterations(&a), salt_and_iterations(&b));
}

#[test]
fn pass_through_keys_log_in_to_a_server_with_the_same_verifier() {
    let stored = verifier("pw");
    // The application logs in to pgberth.
    let mut front = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    exchange(&mut front, &mut ScramClient::new(password("pw"))).unwrap();
    let client_key = front.client_key().unwrap();
    let server_key = front.verifier().unwrap().server_key;

    // pgberth logs in to PostgreSQL with the recovered keys, no plaintext.
    let mut postgres = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    let mut pgberth = ScramClient::new(ScramCredential::Keys {
        client_key,
        server_key,
    });
    exchange(&mut postgres, &mut pgberth).unwrap();
}

#[test]
fn pass_through_keys_against_a_different_verifier_fail() {
    let stored = verifier("pw");
    let mut front = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    exchange(&mut front, &mut ScramClient::new(password("pw"))).unwrap();
    let keys = ScramCredential::Keys {
        client_key: front.client_key().unwrap(),
        server_key: verifier("pw").server_key,
    };
    let other = ScramVerifier::from_password("pw", b"another salt", 4096);
    let mut postgres = ScramServer::new("alice", Some(ScramSecret::Verifier(&other)));
    assert_eq!(
        exchange(&mut postgres, &mut ScramClient::new(keys)),
        Err(AuthError::WrongPassword)
    );
}

#[test]
fn client_detects_forged_server_signature() {
    let stored = verifier("pw");
    let mut server = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    let mut client = ScramClient::new(password("pw"));
    let server_first = server.client_first(&client.client_first()).unwrap();
    let client_final = client.server_first(server_first).unwrap();
    server.client_final(&client_final).unwrap();
    let forged = format!("v={}", b64(&[7u8; 32]));
    assert_eq!(
        client.server_final(forged.as_bytes()),
        Err(AuthError::ServerSignatureMismatch)
    );
}

#[test]
fn client_reports_server_error() {
    let mut client = ScramClient::new(password("pw"));
    let nonce = String::from_utf8(client.client_first()).unwrap()[8..].to_owned();
    client
        .server_first(format!("r={nonce}xyz,s=c2FsdA==,i=1").as_bytes())
        .unwrap();
    assert_eq!(
        client.server_final(b"e=invalid-proof"),
        Err(AuthError::ServerError("invalid-proof".into()))
    );
}

#[test]
fn server_accepts_y_flag_and_rejects_channel_binding() {
    let rfc = rfc_verifier();
    let mut server = ScramServer::with_nonce(
        "user",
        Some(ScramSecret::Verifier(&rfc)),
        RFC_SERVER_NONCE.into(),
    );
    server
        .client_first(b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        .unwrap();
    // c= must now carry base64("y,,"), not "biws".
    assert!(matches!(
        server.client_final(RFC_CLIENT_FINAL.as_bytes()),
        Err(AuthError::Protocol(_))
    ));

    let mut server = ScramServer::new("user", None);
    assert_eq!(
        server.client_first(b"p=tls-server-end-point,,n=,r=abc"),
        Err(AuthError::UnsupportedChannelBinding)
    );
}

#[test]
fn server_rejects_malformed_client_first() {
    let bad: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,x=abc",
        b"n,,n=,r=a b",
        b"n,,n=,r=abc,garbage",
        b"n,,n=,r=\xff\xfe",
    ];
    let stored = verifier("pw");
    for message in bad {
        for secret in [None, Some(ScramSecret::Verifier(&stored))] {
            let mut server = ScramServer::new("alice", secret);
            let result = server.client_first(message);
            assert!(
                matches!(result, Err(AuthError::Protocol(_))),
                "{:?}: {result:?}",
                String::from_utf8_lossy(message)
            );
        }
    }
}

#[test]
fn server_rejects_malformed_client_final() {
    let good = RFC_CLIENT_FINAL;
    let bad: Vec<String> = vec![
        String::new(),
        "c=biws".into(),
        good.replace(",p=", ",q="),
        good.replace("c=biws", "c=!!!!"),
        good.replace("c=biws", "c=eSws"),
        good.replace("c=biws,", ""),
        good.replace(",r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", ""),
        good.replace("hNlF$k0", "hNlF$k1"),
        good.replace("p=dHzb", "p=!Hzb"),
        good.replace("=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "=dHzbZapW"),
        good.replace(",p=", ",junk,p="),
        good[..good.len() - 10].to_owned(),
    ];
    let rfc = rfc_verifier();
    for message in bad {
        let mut server = ScramServer::with_nonce(
            "user",
            Some(ScramSecret::Verifier(&rfc)),
            RFC_SERVER_NONCE.into(),
        );
        server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let result = server.client_final(message.as_bytes());
        assert!(
            matches!(result, Err(AuthError::Protocol(_))),
            "{message:?}: {result:?}"
        );
    }
}

#[test]
fn server_rejects_messages_out_of_order() {
    let stored = verifier("pw");
    let mut server = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    assert!(matches!(
        server.client_final(RFC_CLIENT_FINAL.as_bytes()),
        Err(AuthError::Protocol(_))
    ));
    let stored = verifier("pw");
    let mut server = ScramServer::new("alice", Some(ScramSecret::Verifier(&stored)));
    server.client_first(b"n,,n=,r=abc").unwrap();
    assert!(matches!(
        server.client_first(b"n,,n=,r=abc"),
        Err(AuthError::Protocol(_))
    ));
}

#[test]
fn client_rejects_malformed_server_first() {
    let n = RFC_CLIENT_NONCE;
    let bad: Vec<String> = vec![
        String::new(),
        format!("r={n}"),
        format!("r={n}xyz"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ=="),
        format!("r={n},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        format!("r=other{n},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        format!("r={n}x y,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        format!("m=ext,r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        format!("s=W22ZaJ0SNY7soEsUEjb6gQ==,r={n}xyz,i=4096"),
        format!("r={n}xyz,s=!!notbase64!!,i=4096"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4294967295"),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999"),
        format!(
            "r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={}",
            MAX_ITERATIONS + 1
        ),
        format!("r={n}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,garbage"),
    ];
    for message in bad {
        let mut client = ScramClient::with_nonce(password("pencil"), "", n.into());
        client.client_first();
        let result = client.server_first(message.as_bytes());
        assert!(
            matches!(result, Err(AuthError::Protocol(_))),
            "{message:?}: {result:?}"
        );
    }
    let mut client = ScramClient::new(password("pencil"));
    assert!(matches!(
        client.server_first(b"\xff"),
        Err(AuthError::Protocol(_))
    ));
}

#[test]
fn client_rejects_malformed_server_final() {
    for message in [
        &b""[..],
        b"v=",
        b"v=!!!",
        b"x=abc",
        b"\xff\xfe",
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,junk",
    ] {
        let mut client =
            ScramClient::with_nonce(password("pencil"), "user", RFC_CLIENT_NONCE.into());
        client.client_first();
        client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        let result = client.server_final(message);
        assert!(
            matches!(
                result,
                Err(AuthError::Protocol(_) | AuthError::ServerSignatureMismatch)
            ),
            "{:?}: {result:?}",
            String::from_utf8_lossy(message)
        );
    }
    // Called before the exchange got there.
    let mut client = ScramClient::new(password("pencil"));
    assert!(matches!(
        client.server_final(RFC_SERVER_FINAL.as_bytes()),
        Err(AuthError::Protocol(_))
    ));
}

#[test]
fn server_error_text_is_sanitized_and_bounded() {
    let mut client = ScramClient::with_nonce(password("pencil"), "user", RFC_CLIENT_NONCE.into());
    client.client_first();
    client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    let long = format!("e=bad\u{7}\n{}", "x".repeat(1000));
    let Err(AuthError::ServerError(text)) = client.server_final(long.as_bytes()) else {
        panic!("expected a server error");
    };
    assert!(text.starts_with("badx"));
    assert_eq!(text.len(), 200);
}

#[test]
fn debug_output_never_contains_secrets() {
    let secret = ScramSecret::Password("hunter2");
    assert!(!format!("{secret:?}").contains("hunter2"));
    let credential = password("hunter2");
    assert!(!format!("{credential:?}").contains("hunter2"));
    let mut server = ScramServer::new("alice", Some(secret));
    let mut client = ScramClient::new(credential);
    exchange(&mut server, &mut client).unwrap();
    assert!(!format!("{server:?} {client:?}").contains("hunter2"));
}
