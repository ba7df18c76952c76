//! Postgres Changes: bindings, filters, payloads, and Row Level Security
//! checked in-process. Each test makes its own tables.

use realtime_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(800);

async fn no_change(c: &mut Client) {
    while let Some(m) = c.try_recv(SHORT).await {
        assert_ne!(m.event, "postgres_changes", "unexpected {m:?}");
    }
}

#[tokio::test]
async fn insert_update_delete_with_a_filtered_and_an_unfiltered_binding() {
    let t = published_table(
        "id bigint PRIMARY KEY, title text, done boolean DEFAULT false, at timestamptz DEFAULT '2025-11-03 09:32:55+00'",
    );
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    let ids = subscribed_changes(
        &mut c,
        &format!("realtime:{t}"),
        json!([{"event": "*", "schema": "public", "table": t}, {"event": "INSERT", "schema": "public", "table": t, "filter": "id=eq.2"}]),
    )
    .await;
    psql(&format!("INSERT INTO {t} (id, title) VALUES (1, 'a')"));
    let p = next_change(&mut c).await;
    assert_eq!(p["ids"], json!([ids[0]]), "only the unfiltered binding matches id 1");
    let d = &p["data"];
    assert_eq!(
        (d["schema"].as_str(), d["table"].as_str(), d["type"].as_str()),
        (Some("public"), Some(t.as_str()), Some("INSERT"))
    );
    assert_eq!(d["record"], json!({"id": 1, "title": "a", "done": false, "at": "2025-11-03T09:32:55+00:00"}));
    assert!(d.get("old_record").is_none(), "INSERT has no old_record");
    assert_eq!(d["errors"], Value::Null);
    assert_eq!(
        d["columns"],
        json!([{"name":"id","type":"int8"},{"name":"title","type":"text"},{"name":"done","type":"bool"},{"name":"at","type":"timestamptz"}])
    );
    let ts = d["commit_timestamp"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");

    psql(&format!("INSERT INTO {t} (id, title) VALUES (2, 'b')"));
    let p = next_change(&mut c).await;
    assert_eq!(p["ids"], json!([ids[0], ids[1]]), "one message listing both bindings");

    psql(&format!("UPDATE {t} SET title = 'c' WHERE id = 1"));
    let d = next_change(&mut c).await["data"].clone();
    assert_eq!(d["type"], "UPDATE");
    assert_eq!(d["record"]["title"], "c");
    assert_eq!(d["old_record"], json!({"id": 1}), "default replica identity: the key");

    psql(&format!("DELETE FROM {t} WHERE id = 1"));
    let d = next_change(&mut c).await["data"].clone();
    assert_eq!(d["type"], "DELETE");
    assert!(d.get("record").is_none(), "DELETE has no record");
    assert_eq!(d["old_record"], json!({"id": 1}));
}

#[tokio::test]
async fn filters_compare_as_the_column_type() {
    let t = published_table("id int PRIMARY KEY, n numeric, name text");
    let mut c = Client::connect(Vsn::V1, &jwt("service_role")).await;
    let topic = format!("realtime:{t}");
    let ids = subscribed_changes(
        &mut c,
        &topic,
        json!([
            {"event": "INSERT", "schema": "public", "table": t, "filter": "n=gt.9"},
            {"event": "INSERT", "schema": "public", "table": t, "filter": "id=in.(3,4)"},
            {"event": "INSERT", "schema": "public", "table": t, "filter": "name=neq.skip,id=lte.5"}
        ]),
    )
    .await;
    // 10 > 9 as numbers (as text it would not be).
    psql(&format!("INSERT INTO {t} VALUES (1, 10, 'skip')"));
    assert_eq!(next_change(&mut c).await["ids"], json!([ids[0]]));
    psql(&format!("INSERT INTO {t} VALUES (3, 1, 'x')"));
    assert_eq!(next_change(&mut c).await["ids"], json!([ids[1], ids[2]]));
    psql(&format!("INSERT INTO {t} VALUES (7, 1, 'x')"));
    no_change(&mut c).await;
}

#[tokio::test]
async fn deletes_are_filtered_on_the_old_row_and_only_on_its_identity() {
    let t = published_table("id int PRIMARY KEY, kind text");
    psql(&format!("INSERT INTO {t} VALUES (1, 'a'), (2, 'b')"));
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    let topic = format!("realtime:{t}");
    subscribed_changes(
        &mut c,
        &topic,
        json!([{"event": "DELETE", "schema": "public", "table": t, "filter": "id=eq.2"}, {"event": "DELETE", "schema": "public", "table": t, "filter": "kind=eq.b"}]),
    )
    .await;
    // id=eq.2 fails on the old key; kind is not in the identity, and a
    // filter on a column the row does not carry passes nothing, as in
    // Supabase's is_visible_through_filters.
    psql(&format!("DELETE FROM {t} WHERE id = 1"));
    no_change(&mut c).await;
    psql(&format!("DELETE FROM {t} WHERE id = 2"));
    assert_eq!(next_change(&mut c).await["ids"].as_array().unwrap().len(), 1);
    // With the whole row as identity, both filters see their column.
    psql(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL; INSERT INTO {t} VALUES (3, 'b'); UPDATE {t} SET id = 2"));
    psql(&format!("DELETE FROM {t}"));
    loop {
        let p = next_change(&mut c).await;
        if p["data"]["type"] == "DELETE" {
            assert_eq!(p["ids"].as_array().unwrap().len(), 2, "{p}");
            break;
        }
    }
}

#[tokio::test]
async fn replica_identity_full_old_records() {
    let t = published_table("id int PRIMARY KEY, title text");
    psql(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL; INSERT INTO {t} VALUES (1, 'a')"));
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    subscribed_changes(&mut c, &format!("realtime:{t}"), json!([{"event": "*", "schema": "public", "table": t}])).await;
    psql(&format!("UPDATE {t} SET title = 'b'"));
    // The insert may still be decoded after the subscription (as Supabase,
    // which reads the slot after subscribing, would deliver it too).
    let mut update = next_change(&mut c).await;
    if update["data"]["type"] == "INSERT" {
        update = next_change(&mut c).await;
    }
    assert_eq!(update["data"]["old_record"], json!({"id": 1, "title": "a"}));
    psql(&format!("DELETE FROM {t}"));
    assert_eq!(next_change(&mut c).await["data"]["old_record"], json!({"id": 1, "title": "b"}));
}

#[tokio::test]
async fn two_users_each_see_only_their_own_rows() {
    let t = published_table("id int PRIMARY KEY, owner uuid, body text");
    psql(&format!(
        "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
         GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY own ON {t} FOR SELECT TO authenticated USING (owner = auth.uid());"
    ));
    let (alice, bob) = ("00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b");
    let topic = format!("realtime:{t}");
    let binding = json!([{"event": "*", "schema": "public", "table": t}]);
    let mut a = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": alice}))).await;
    let mut b = Client::connect(Vsn::V1, &jwt_with("authenticated", json!({"sub": bob}))).await;
    let mut anon = Client::connect(Vsn::V1, &jwt("anon")).await;
    subscribed_changes(&mut a, &topic, binding.clone()).await;
    subscribed_changes(&mut b, &topic, binding.clone()).await;
    subscribed_changes(&mut anon, &topic, binding).await;
    psql(&format!("INSERT INTO {t} VALUES (1, '{alice}', 'for alice'), (2, '{bob}', 'for bob')"));
    assert_eq!(next_change(&mut a).await["data"]["record"]["body"], "for alice");
    assert_eq!(next_change(&mut b).await["data"]["record"]["body"], "for bob");
    no_change(&mut a).await;
    no_change(&mut b).await;
    // anon has no SELECT on the table: it may not read the key.
    for _ in 0..2 {
        assert_eq!(next_change(&mut anon).await["data"]["errors"], json!(["Error 401: Unauthorized"]));
    }
    // A delete cannot be checked: everyone gets it, with the key only.
    psql(&format!("DELETE FROM {t} WHERE id = 1"));
    assert_eq!(next_change(&mut b).await["data"]["old_record"], json!({"id": 1}));
}

#[tokio::test]
async fn a_refreshed_token_applies_its_claims() {
    let t = published_table("id int PRIMARY KEY, owner uuid");
    psql(&format!(
        "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY own ON {t} FOR SELECT TO authenticated USING (owner = auth.uid());"
    ));
    let (first, second) = ("00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002");
    let mut c = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": first}))).await;
    let topic = format!("realtime:{t}");
    let (jr, _, _) =
        subscribe_changes(&mut c, &topic, json!([{"event": "INSERT", "schema": "public", "table": t}])).await;
    psql(&format!("INSERT INTO {t} VALUES (1, '{first}')"));
    assert_eq!(next_change(&mut c).await["data"]["record"]["id"], 1);
    c.push(
        Some(&jr),
        Some("9"),
        &topic,
        "access_token",
        json!({"access_token": jwt_with("authenticated", json!({"sub": second}))}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    psql(&format!("INSERT INTO {t} VALUES (2, '{first}'), (3, '{second}')"));
    assert_eq!(next_change(&mut c).await["data"]["record"]["id"], 3);
    no_change(&mut c).await;
}

#[tokio::test]
async fn a_private_schema_with_a_grant() {
    let schema = unique("priv").replace('-', "_");
    psql(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.notes (id int PRIMARY KEY, body text);
         ALTER PUBLICATION supabase_realtime ADD TABLE {schema}.notes;"
    ));
    let topic = format!("realtime:{schema}");
    let binding = json!([{"event": "*", "schema": schema, "table": "notes"}]);
    let mut c = Client::connect(Vsn::V2, &jwt("authenticated")).await;
    subscribed_changes(&mut c, &topic, binding.clone()).await;
    psql(&format!("INSERT INTO {schema}.notes VALUES (1, 'hidden')"));
    assert_eq!(next_change(&mut c).await["data"]["errors"], json!(["Error 401: Unauthorized"]));
    psql(&format!("GRANT USAGE ON SCHEMA {schema} TO authenticated; GRANT SELECT ON {schema}.notes TO authenticated"));
    psql(&format!("INSERT INTO {schema}.notes VALUES (2, 'shown')"));
    let d = next_change(&mut c).await["data"].clone();
    assert_eq!((d["schema"].as_str(), d["record"]["body"].as_str()), (Some(schema.as_str()), Some("shown")));
}

#[tokio::test]
async fn a_column_privilege_hides_a_column() {
    let t = published_table("id int PRIMARY KEY, name text, salary int");
    psql(&format!("GRANT SELECT (id, name) ON {t} TO authenticated"));
    let mut c = Client::connect(Vsn::V1, &jwt("authenticated")).await;
    subscribed_changes(&mut c, &format!("realtime:{t}"), json!([{"event": "INSERT", "schema": "public", "table": t}]))
        .await;
    psql(&format!("INSERT INTO {t} VALUES (1, 'ann', 100)"));
    let d = next_change(&mut c).await["data"].clone();
    assert_eq!(d["record"], json!({"id": 1, "name": "ann"}));
    assert_eq!(d["columns"], json!([{"name":"id","type":"int4"},{"name":"name","type":"text"}]));
}

#[tokio::test]
async fn tables_without_a_key_and_records_over_the_limit() {
    let t = published_table("body text");
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    subscribed_changes(&mut c, &format!("realtime:{t}"), json!([{"event": "*", "schema": "public", "table": t}])).await;
    psql(&format!("INSERT INTO {t} VALUES ('x')"));
    let d = next_change(&mut c).await["data"].clone();
    assert_eq!(d["errors"], json!(["Error 400: Bad Request, no primary key"]));
    assert_eq!(
        (d["columns"].clone(), d["record"].clone(), d["commit_timestamp"].clone()),
        (json!([]), json!({}), Value::Null)
    );

    let big = published_table("id int PRIMARY KEY, small text, large text");
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    subscribed_changes(
        &mut c,
        &format!("realtime:{big}"),
        json!([{"event": "INSERT", "schema": "public", "table": big}]),
    )
    .await;
    psql(&format!("INSERT INTO {big} VALUES (1, 'tiny', repeat('x', 1100000))"));
    let d = next_change(&mut c).await["data"].clone();
    assert_eq!(d["errors"], json!(["Error 413: Payload Too Large"]));
    assert_eq!(d["record"], json!({"id": 1, "small": "tiny"}));
}

#[tokio::test]
async fn a_policy_that_raises_fails_its_subscriber_alone() {
    let t = published_table("id int PRIMARY KEY, owner text");
    psql(&format!(
        "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY by_uid ON {t} FOR SELECT TO authenticated USING (owner = auth.uid()::text);"
    ));
    let topic = format!("realtime:{t}");
    let binding = json!([{"event": "INSERT", "schema": "public", "table": t}]);
    let good = "00000000-0000-4000-8000-0000000000cc";
    // A `sub` that is not a uuid makes auth.uid() raise for that subscriber.
    let mut broken = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": "not-a-uuid"}))).await;
    let mut fine = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": good}))).await;
    subscribed_changes(&mut broken, &topic, binding.clone()).await;
    subscribed_changes(&mut fine, &topic, binding).await;
    psql(&format!("INSERT INTO {t} VALUES (1, '{good}')"));
    assert_eq!(next_change(&mut fine).await["data"]["record"]["id"], 1);
    let errors = next_change(&mut broken).await["data"]["errors"].clone();
    assert!(errors[0].as_str().unwrap().starts_with("Error 500: "), "{errors}");
}

#[tokio::test]
async fn subscription_errors_keep_the_channel_open() {
    let t = published_table("id int PRIMARY KEY");
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    let cases = [
        (json!([{"event": "*", "schema": "public", "table": t, "filter": "wrong"}]), "Error parsing `filter` params: [\"wrong\"]".to_owned()),
        (
            json!([{"event": "*", "schema": "public", "table": "doesnotexist"}]),
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: doesnotexist, filters: [], select: nil]".to_owned(),
        ),
        (
            json!([{"event": "INSERT", "schema": "public", "table": t, "filter": "notacolumn=eq.1"}]),
            format!("Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [event: INSERT, schema: public, table: {t}, filters: [{{\"notacolumn\", \"eq\", \"1\", false}}], select: nil]. Exception: ERROR P0001 (raise_exception) invalid column for filter notacolumn"),
        ),
    ];
    for (bindings, message) in cases {
        let topic = format!("realtime:{}", unique("err"));
        let (jr, _, system) = subscribe_changes(&mut c, &topic, bindings).await;
        assert_eq!(system["status"], "error");
        assert_eq!(system["message"], message);
        // Still joined: a broadcast push is not "unmatched".
        c.push(Some(&jr), Some("x"), &topic, "phx_leave", json!({})).await;
        assert_eq!(c.recv_event("phx_reply").await.payload["status"], "ok");
        c.recv_event("phx_close").await;
    }
    let values: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let (_, _, system) = subscribe_changes(
        &mut c,
        &format!("realtime:{}", unique("err")),
        json!([{"event": "*", "schema": "public", "table": t, "filter": format!("id=in.({})", values.join(","))}]),
    )
    .await;
    assert!(system["message"].as_str().unwrap().ends_with("too many values for `in` filter. Maximum 100"), "{system}");
    let (_, _, system) = subscribe_changes(
        &mut c,
        &format!("realtime:{}", unique("err")),
        json!([{"event": "*", "schema": "public", "table": t, "filter": "id=eq.abc"}]),
    )
    .await;
    assert!(
        system["message"].as_str().unwrap().ends_with(
            "Exception: ERROR 22P02 (invalid_text_representation) invalid input syntax for type integer: \"abc\""
        ),
        "{system}"
    );
    // Supabase's checks per operator, and for `select`.
    let checks = [
        (json!({"filter": "id=is.maybe"}), "invalid value for is filter: must be null, true, false, or unknown"),
        (json!({"filter": "id=is.true"}), "is true filter requires a boolean column, got integer"),
        (json!({"filter": "id=like.1%"}), "operator like requires a text-compatible column type, got integer"),
        (json!({"filter": "id=match.1"}), "operator match requires a text-compatible column type, got integer"),
        (json!({"select": ["id", "nope"]}), "invalid column for select nope"),
    ];
    for (extra, message) in checks {
        let mut binding = json!({"event": "*", "schema": "public", "table": t});
        binding.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (_, _, system) = subscribe_changes(&mut c, &format!("realtime:{}", unique("err")), json!([binding])).await;
        assert!(
            system["message"].as_str().unwrap().ends_with(&format!("ERROR P0001 (raise_exception) {message}")),
            "{system}"
        );
    }
    let malformed = [
        (
            json!({"schema": "*", "select": ["id"]}),
            "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.",
        ),
        (
            json!({"schema": "public", "table": t, "select": "id"}),
            "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]",
        ),
        (
            json!({"schema": "public", "table": t, "filter": "id=eq.1,"}),
            "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)",
        ),
        (
            json!({"schema": "public", "table": t, "filter": "id=in.1"}),
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
        ),
    ];
    for (binding, message) in malformed {
        let (_, _, system) = subscribe_changes(&mut c, &format!("realtime:{}", unique("err")), json!([binding])).await;
        assert_eq!(system["message"], message);
    }
}

/// Every operator, negation, AND, `in` with quoting, and `select`, on one
/// table; each binding's id says which rows it matched.
#[tokio::test]
async fn every_filter_operator_as_supabase_evaluates_it() {
    let t = published_table("id int PRIMARY KEY, name text, flag boolean, score numeric, secret text");
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    let filters = [
        "id=eq.1",
        "id=neq.1",
        "id=lt.2",
        "id=lte.2",
        "id=gt.2",
        "id=gte.2",
        "name=in.(\"a,b\",c)",
        "name=not.in.(\"a,b\",c)",
        "name=like.c%",
        "name=ilike.C%",
        "name=match.^[a-c]",
        "name=imatch.^A",
        "flag=is.true",
        "flag=is.null",
        "flag=not.is.null",
        "score=isdistinct.1.5",
        "score=not.isdistinct.1.5",
        "id=gt.1,score=lt.3",
        "name=not.eq.c",
    ];
    let mut bindings: Vec<Value> =
        filters.iter().map(|f| json!({"event": "INSERT", "schema": "public", "table": t, "filter": f})).collect();
    bindings.push(json!({"event": "INSERT", "schema": "public", "table": t, "select": ["name"]}));
    let ids = subscribed_changes(&mut c, &format!("realtime:{t}"), Value::Array(bindings)).await;
    psql(&format!(
        "INSERT INTO {t} VALUES (1, 'a,b', true, 1.5, 's'), (2, 'c', null, 2, 's'), (3, 'Ab', false, null, 's')"
    ));
    let mut matched: Vec<Vec<usize>> = vec![Vec::new(); 3];
    let mut selected = Vec::new();
    // Per row, one message for the filters' bindings, one for `select`'s.
    for _ in 0..6 {
        let p = next_change(&mut c).await;
        let row = p["data"]["record"]["id"].as_i64().unwrap() as usize;
        for id in p["ids"].as_array().unwrap() {
            match ids.iter().position(|i| i == id).unwrap() {
                n if n < filters.len() => matched[row - 1].push(n),
                _ => selected.push(p["data"]["record"].clone()),
            }
        }
    }
    let matched: Vec<Vec<&str>> = matched
        .into_iter()
        .map(|mut row| {
            row.sort();
            row.into_iter().map(|n| filters[n]).collect()
        })
        .collect();
    let expect = |fs: &[&'static str]| fs.to_vec();
    assert_eq!(
        matched[0],
        expect(&[
            "id=eq.1",
            "id=lt.2",
            "id=lte.2",
            "name=in.(\"a,b\",c)",
            "name=match.^[a-c]",
            "name=imatch.^A",
            "flag=is.true",
            "flag=not.is.null",
            "score=not.isdistinct.1.5",
            "name=not.eq.c"
        ])
    );
    assert_eq!(
        matched[1],
        expect(&[
            "id=neq.1",
            "id=lte.2",
            "id=gte.2",
            "name=in.(\"a,b\",c)",
            "name=like.c%",
            "name=ilike.C%",
            "name=match.^[a-c]",
            "flag=is.null",
            "score=isdistinct.1.5",
            "id=gt.1,score=lt.3"
        ])
    );
    // A NULL score is distinct from 1.5 and fails `lt`; `not.in` and `not.eq` pass 'Ab'.
    assert_eq!(
        matched[2],
        expect(&[
            "id=neq.1",
            "id=gt.2",
            "id=gte.2",
            "name=not.in.(\"a,b\",c)",
            "name=imatch.^A",
            "flag=not.is.null",
            "score=isdistinct.1.5",
            "name=not.eq.c"
        ])
    );
    // `select` keeps the listed columns and the key.
    assert!(
        selected.iter().all(|r| r.as_object().unwrap().keys().collect::<Vec<_>>() == ["id", "name"]),
        "{selected:?}"
    );
    assert_eq!(selected.len(), 3);
}

#[tokio::test]
async fn delivered_changes_per_second_with_100_subscribers() {
    let t = published_table("id int PRIMARY KEY, owner uuid, body text");
    psql(&format!(
        "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO authenticated;
         CREATE POLICY readable ON {t} FOR SELECT TO authenticated USING (owner IS NOT NULL);"
    ));
    let topic = format!("realtime:{t}");
    let binding = json!([{"event": "INSERT", "schema": "public", "table": t}]);
    let mut clients = Vec::new();
    for i in 0..100 {
        let sub = format!("00000000-0000-4000-8000-{i:012}");
        let mut c = Client::connect(Vsn::V2, &jwt_with("authenticated", json!({"sub": sub}))).await;
        subscribed_changes(&mut c, &topic, binding.clone()).await;
        clients.push(c);
    }
    let rows = 200;
    let started = Instant::now();
    psql(&format!("INSERT INTO {t} SELECT i, gen_random_uuid(), 'row ' || i FROM generate_series(1, {rows}) i"));
    let mut delivered = 0;
    for c in &mut clients {
        for _ in 0..rows {
            next_change(c).await;
            delivered += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "postgres_changes with RLS: {delivered} changes to 100 subscribers (100 distinct claims) in {seconds:.2} s = {:.0} delivered/s",
        delivered as f64 / seconds
    );
}

/// `table: '*'` follows the publication: a table added after the join is
/// watched within a few seconds, without a rejoin.
#[tokio::test]
async fn a_wildcard_binding_sees_tables_added_later() {
    let schema = unique("wc").replace('-', "_");
    psql(&format!(
        "CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO service_role;
         CREATE TABLE {schema}.first (id int PRIMARY KEY); GRANT SELECT ON {schema}.first TO service_role;
         ALTER PUBLICATION supabase_realtime ADD TABLE {schema}.first;"
    ));
    let mut c = Client::connect(Vsn::V2, &jwt("service_role")).await;
    subscribed_changes(
        &mut c,
        &format!("realtime:{schema}"),
        json!([{"event": "INSERT", "schema": schema, "table": "*"}]),
    )
    .await;
    psql(&format!(
        "CREATE TABLE {schema}.later (id int PRIMARY KEY); GRANT SELECT ON {schema}.later TO service_role;
         ALTER PUBLICATION supabase_realtime ADD TABLE {schema}.later;"
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        assert!(Instant::now() < deadline, "no change from the later table within 10 s");
        n += 1;
        psql(&format!("INSERT INTO {schema}.later VALUES ({n})"));
        if let Some(m) = c.try_recv(Duration::from_secs(1)).await
            && m.event == "postgres_changes"
        {
            assert_eq!(m.payload["data"]["table"], "later");
            break;
        }
    }
    // And the first table still.
    psql(&format!("INSERT INTO {schema}.first VALUES (1)"));
    assert_eq!(next_change(&mut c).await["data"]["table"], "first");
}
