//! The SQL of alerts, shared by both engines: receivers and rules as ARM resources, and the outbox (migrations
//! 0019/0017). Each step of the outbox is one transaction: the dispatcher turns a batch of queued events into
//! deliveries and deletes it, a sender leases a receiver's due deliveries and takes their tokens, and records each
//! attempt's end. On PostgreSQL the rows a step takes are locked with `SKIP LOCKED`, so that replicas share the work
//! without waiting on each other and no row is taken twice; SQLite has one writer at a time. What the steps decide
//! (which alerts, which rules, what is held back, how many tokens) are the plain functions of `alerts::model`.

/// The columns of `AlertReceiverRecord`.
macro_rules! receiver_columns {
    () => {
        "id, key, subscription_key, resource_group_key, subscription, resource_group, name, spec, sealed_url, \
         sealed_signing_key, etag, system_data, tokens, tokens_at, dropped, dropped_at"
    };
}

/// The columns of `AlertRuleRecord` (its receivers are read apart).
macro_rules! rule_columns {
    () => {
        "id, key, subscription_key, resource_group_key, subscription, resource_group, name, spec, cluster_group_id, \
         etag, system_data"
    };
}

/// The columns of `DeliveryRecord`.
macro_rules! delivery_columns {
    () => {
        "id, delivery_id, receiver_id, rule_id, created_at, state, due_at, attempts, last_attempt_at, \
         last_status_code, last_error, finished_at, message"
    };
}

/// Implements `Alerts` for `$store` over `$db`: `$skip` ends a `SELECT` that locks the rows it takes and skips those
/// another transaction holds, `$skip_no_key` the same with a lock that lets rows referencing them be inserted,
/// `$lock` one that waits (each empty where the engine has one writer), `$write` begins a transaction that writes.
macro_rules! alerts_store {
    (
        $store:ty,
        $db:ty,
        skip = $skip:literal,
        skip_no_key = $skip_no_key:literal,
        lock = $lock:literal,
        write_begin = $write:expr
    ) => {
        #[async_trait::async_trait]
        impl $crate::store::Alerts for $store {
            async fn get_alert_receiver(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::AlertReceiverRecord>> {
                let sql = concat!("SELECT ", receiver_columns!(), " FROM alert_receivers WHERE key = $1");
                Ok(sqlx::query_as::<$db, $crate::model::AlertReceiverRecord>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_alert_receivers(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::AlertReceiverRecord>> {
                let (subscription_key, resource_group_key) = scope.keys();
                let sql = concat!(
                    "SELECT ",
                    receiver_columns!(),
                    " FROM alert_receivers WHERE subscription_key = $1 AND ($2 = '' OR resource_group_key = $2) \
                     AND key > $3 ORDER BY key LIMIT $4"
                );
                Ok(sqlx::query_as::<$db, $crate::model::AlertReceiverRecord>(sql)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_alert_receiver(
                &self,
                r: &$crate::model::AlertReceiverRecord,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let done = sqlx::query::<$db>(
                    "INSERT INTO alert_receivers (key, subscription_key, resource_group_key, subscription, \
                     resource_group, name, spec, sealed_url, sealed_signing_key, etag, system_data, tokens, tokens_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (key) DO NOTHING",
                )
                .bind(&r.key)
                .bind(&r.subscription_key)
                .bind(&r.resource_group_key)
                .bind(&r.subscription)
                .bind(&r.resource_group)
                .bind(&r.name)
                .bind(sqlx::types::Json(&r.spec))
                .bind(&r.sealed_url)
                .bind(&r.sealed_signing_key)
                .bind(&r.etag)
                .bind(sqlx::types::Json(&r.system_data))
                .bind(r.tokens)
                .bind(r.tokens_at)
                .execute(self.writer())
                .await?;
                Ok(if done.rows_affected() == 1 {
                    $crate::model::Write::Written
                } else {
                    $crate::model::Write::Conflict
                })
            }

            async fn update_alert_receiver(
                &self,
                r: &$crate::model::AlertReceiverRecord,
                expected_etag: &str,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                // the bucket keeps its tokens, but never more than the (new) limit's capacity
                let done = sqlx::query::<$db>(
                    "UPDATE alert_receivers SET spec = $1, sealed_url = $2, sealed_signing_key = $3, etag = $4, \
                     system_data = $5, tokens = CASE WHEN tokens > $6 THEN $6 ELSE tokens END \
                     WHERE key = $7 AND etag = $8",
                )
                .bind(sqlx::types::Json(&r.spec))
                .bind(&r.sealed_url)
                .bind(&r.sealed_signing_key)
                .bind(&r.etag)
                .bind(sqlx::types::Json(&r.system_data))
                .bind(r.tokens)
                .bind(&r.key)
                .bind(expected_etag)
                .execute(self.writer())
                .await?;
                Ok(if done.rows_affected() == 1 {
                    $crate::model::Write::Written
                } else {
                    $crate::model::Write::Conflict
                })
            }

            async fn delete_alert_receiver(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<$crate::model::GroupDelete> {
                let done = sqlx::query::<$db>("DELETE FROM alert_receivers WHERE key = $1")
                    .bind(key)
                    .execute(self.writer())
                    .await;
                Ok(match done {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        $crate::model::GroupDelete::InUse
                    }
                    Err(err) => return Err(err.into()),
                    Ok(done) if done.rows_affected() > 0 => $crate::model::GroupDelete::Deleted,
                    Ok(_) => $crate::model::GroupDelete::Missing,
                })
            }

            async fn receiver_status(
                &self,
                receiver_id: i64,
            ) -> $crate::store::StoreResult<$crate::model::ReceiverStatus> {
                // one snapshot, so that the backlog and the attempts agree
                let mut tx = $crate::store::begin(&self.pool, None).await?;
                let (backlog, next_attempt_at) = sqlx::query_as::<$db, (i64, Option<chrono::DateTime<chrono::Utc>>)>(
                    "SELECT COUNT(*), MIN(CASE WHEN state = 'Pending' THEN due_at END) FROM alert_deliveries \
                     WHERE receiver_id = $1 AND state IN ('Pending', 'Sending')",
                )
                .bind(receiver_id)
                .fetch_one(&mut *tx)
                .await?;
                let last_delivered_at = sqlx::query_scalar::<$db, Option<chrono::DateTime<chrono::Utc>>>(
                    "SELECT MAX(finished_at) FROM alert_deliveries WHERE receiver_id = $1 AND state = 'Delivered'",
                )
                .bind(receiver_id)
                .fetch_one(&mut *tx)
                .await?;
                let last_failure = sqlx::query_as::<
                    $db,
                    (chrono::DateTime<chrono::Utc>, Option<i32>, Option<String>),
                >(
                    "SELECT last_attempt_at, last_status_code, last_error FROM alert_deliveries \
                     WHERE receiver_id = $1 AND last_error IS NOT NULL AND last_attempt_at IS NOT NULL \
                     ORDER BY last_attempt_at DESC LIMIT 1",
                )
                .bind(receiver_id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok($crate::model::ReceiverStatus {
                    backlog,
                    last_delivered_at,
                    last_failure,
                    next_attempt_at,
                })
            }

            async fn list_deliveries(
                &self,
                receiver_id: i64,
                before: Option<i64>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::model::DeliveryRecord>> {
                let sql = concat!(
                    "SELECT ",
                    delivery_columns!(),
                    " FROM alert_deliveries WHERE receiver_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
                );
                Ok(sqlx::query_as::<$db, $crate::model::DeliveryRecord>(sql)
                    .bind(receiver_id)
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn get_alert_rule(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::AlertRuleRecord>> {
                let sql = concat!("SELECT ", rule_columns!(), " FROM alert_rules WHERE key = $1");
                let rule = sqlx::query_as::<$db, $crate::model::AlertRuleRecord>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(mut rule) = rule else {
                    return Ok(None);
                };
                rule.receivers = sqlx::query_scalar::<$db, i64>(
                    "SELECT receiver_id FROM alert_rule_receivers WHERE rule_id = $1 ORDER BY receiver_id",
                )
                .bind(rule.id)
                .fetch_all(&self.pool)
                .await?;
                Ok(Some(rule))
            }

            async fn list_alert_rules(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::AlertRuleRecord>> {
                let (subscription_key, resource_group_key) = scope.keys();
                let sql = concat!(
                    "SELECT ",
                    rule_columns!(),
                    " FROM alert_rules WHERE subscription_key = $1 AND ($2 = '' OR resource_group_key = $2) \
                     AND key > $3 ORDER BY key LIMIT $4"
                );
                Ok(sqlx::query_as::<$db, $crate::model::AlertRuleRecord>(sql)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_alert_rule(
                &self,
                r: &$crate::model::AlertRuleRecord,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let id = sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO alert_rules (key, subscription_key, resource_group_key, subscription, resource_group, \
                     name, spec, cluster_group_id, etag, system_data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (key) DO NOTHING RETURNING id",
                )
                .bind(&r.key)
                .bind(&r.subscription_key)
                .bind(&r.resource_group_key)
                .bind(&r.subscription)
                .bind(&r.resource_group)
                .bind(&r.name)
                .bind(sqlx::types::Json(&r.spec))
                .bind(r.cluster_group_id)
                .bind(&r.etag)
                .bind(sqlx::types::Json(&r.system_data))
                .fetch_optional(&mut *tx)
                .await;
                let id = match id {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        return Ok($crate::model::Write::ParentMissing);
                    }
                    Err(err) => return Err(err.into()),
                    Ok(None) => return Ok($crate::model::Write::Conflict),
                    Ok(Some(id)) => id,
                };
                match Self::set_rule_receivers(&mut tx, id, &r.receivers).await {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        return Ok($crate::model::Write::ParentMissing);
                    }
                    other => other?,
                }
                tx.commit().await?;
                Ok($crate::model::Write::Written)
            }

            async fn update_alert_rule(
                &self,
                r: &$crate::model::AlertRuleRecord,
                expected_etag: &str,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let id = sqlx::query_scalar::<$db, i64>(
                    "UPDATE alert_rules SET spec = $1, cluster_group_id = $2, etag = $3, system_data = $4 \
                     WHERE key = $5 AND etag = $6 RETURNING id",
                )
                .bind(sqlx::types::Json(&r.spec))
                .bind(r.cluster_group_id)
                .bind(&r.etag)
                .bind(sqlx::types::Json(&r.system_data))
                .bind(&r.key)
                .bind(expected_etag)
                .fetch_optional(&mut *tx)
                .await;
                let id = match id {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        return Ok($crate::model::Write::ParentMissing);
                    }
                    Err(err) => return Err(err.into()),
                    Ok(None) => return Ok($crate::model::Write::Conflict),
                    Ok(Some(id)) => id,
                };
                sqlx::query::<$db>("DELETE FROM alert_rule_receivers WHERE rule_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                match Self::set_rule_receivers(&mut tx, id, &r.receivers).await {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        return Ok($crate::model::Write::ParentMissing);
                    }
                    other => other?,
                }
                tx.commit().await?;
                Ok($crate::model::Write::Written)
            }

            async fn delete_alert_rule(&self, key: &str) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query::<$db>("DELETE FROM alert_rules WHERE key = $1")
                    .bind(key)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn dispatch_alerts(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limits: &$crate::model::DispatchLimits,
            ) -> $crate::store::StoreResult<$crate::model::Dispatched> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!(
                    "SELECT id, at, kind, subscription_key, resource_group_key, cluster_id, cluster_path, name, \
                     policy_assignment, facts FROM alert_events ORDER BY id LIMIT $1",
                    $skip
                );
                let events = sqlx::query_as::<$db, $crate::alerts::model::QueuedEvent>(sql)
                    .bind(limits.batch)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut done = $crate::model::Dispatched {
                    taken: events.len(),
                    ..Default::default()
                };
                if events.is_empty() {
                    tx.commit().await?;
                    return Ok(done);
                }
                let alerts: Vec<$crate::alerts::model::Alert> =
                    events.iter().flat_map($crate::alerts::model::classify).collect();
                let rules = Self::matching_rules(&mut tx, &alerts).await?;
                let clusters = Self::cluster_facts(&mut tx, &alerts, &rules).await?;
                // (rule, subject) → its alerts in order; sorted, so that replicas lock throttle rows in one order
                let mut matched: std::collections::BTreeMap<(i64, String), Vec<&$crate::alerts::model::Alert>> =
                    Default::default();
                for alert in &alerts {
                    let cluster = alert.scope.cluster.and_then(|id| clusters.get(&id));
                    for (rule, _) in rules.get(&alert.scope.subscription_key).into_iter().flatten() {
                        if $crate::alerts::model::matches(rule, alert, cluster) {
                            matched
                                .entry((rule.id, $crate::alerts::model::subject_key(alert)))
                                .or_default()
                                .push(alert);
                        }
                    }
                }
                let by_id: std::collections::BTreeMap<i64, &($crate::alerts::model::MatchingRule, $crate::alerts::model::RuleRef)> =
                    rules.values().flatten().map(|r| (r.0.id, r)).collect();
                let mut messages = Vec::new();
                for ((rule_id, subject), alerts) in matched {
                    let (rule, reference) = by_id[&rule_id];
                    let sent = Self::throttle(&mut tx, rule, reference, &subject, &alerts, now).await?;
                    done.held += alerts.len().saturating_sub(sent.len());
                    messages.extend(sent.into_iter().map(|m| (rule_id, m)));
                }
                Self::queue_messages(&mut tx, messages, now, limits.backlog, &mut done).await?;
                let mut delete = sqlx::QueryBuilder::<$db>::new("DELETE FROM alert_events WHERE id IN (");
                let mut list = delete.separated(", ");
                for event in &events {
                    list.push_bind(event.id);
                }
                list.push_unseparated(")");
                delete.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done)
            }

            async fn flush_held_alerts(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limits: &$crate::model::DispatchLimits,
            ) -> $crate::store::StoreResult<$crate::model::Dispatched> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!(
                    "SELECT rule_id, subject, held FROM alert_throttle WHERE flush_at IS NOT NULL AND flush_at <= $1 \
                     ORDER BY rule_id, subject LIMIT $2",
                    $skip
                );
                let due = sqlx::query_as::<$db, (i64, String, Option<sqlx::types::Json<$crate::alerts::model::Held>>)>(sql)
                    .bind(now)
                    .bind(limits.batch)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut done = $crate::model::Dispatched {
                    taken: due.len(),
                    ..Default::default()
                };
                let mut messages = Vec::new();
                for (rule_id, subject, held) in due {
                    if let Some(held) = held {
                        let rule = sqlx::query_as::<$db, $crate::model::AlertRuleRecord>(concat!(
                            "SELECT ",
                            rule_columns!(),
                            " FROM alert_rules WHERE id = $1"
                        ))
                        .bind(rule_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some(rule) = rule {
                            let reference = $crate::alerts::model::RuleRef {
                                id: rule.arm_id(),
                                name: rule.name.clone(),
                            };
                            messages.push((
                                rule_id,
                                $crate::alerts::model::Message::of_held(&held.0, &reference, rule.spec.severity),
                            ));
                        }
                    }
                    sqlx::query::<$db>(
                        "UPDATE alert_throttle SET last_sent_at = $1, held = NULL, flush_at = NULL \
                         WHERE rule_id = $2 AND subject = $3",
                    )
                    .bind(now)
                    .bind(rule_id)
                    .bind(&subject)
                    .execute(&mut *tx)
                    .await?;
                }
                Self::queue_messages(&mut tx, messages, now, limits.backlog, &mut done).await?;
                tx.commit().await?;
                Ok(done)
            }

            async fn due_receivers(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<i64>> {
                Ok(sqlx::query_scalar::<$db, i64>(
                    "SELECT DISTINCT receiver_id FROM alert_deliveries WHERE state IN ('Pending', 'Sending') \
                     AND due_at <= $1 ORDER BY receiver_id LIMIT $2",
                )
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn claim_deliveries(
                &self,
                receiver_id: i64,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
                max: i64,
            ) -> $crate::store::StoreResult<
                Option<($crate::model::AlertReceiverRecord, Vec<$crate::model::DeliveryRecord>, bool)>,
            > {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!("SELECT ", receiver_columns!(), " FROM alert_receivers WHERE id = $1", $skip_no_key);
                let receiver = sqlx::query_as::<$db, $crate::model::AlertReceiverRecord>(sql)
                    .bind(receiver_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(receiver) = receiver else {
                    tx.commit().await?;
                    return Ok(None);
                };
                let sql = concat!(
                    "SELECT id FROM alert_deliveries WHERE receiver_id = $1 AND state IN ('Pending', 'Sending') \
                     AND due_at <= $2 ORDER BY due_at, id LIMIT $3",
                    $skip
                );
                let due = sqlx::query_scalar::<$db, i64>(sql)
                    .bind(receiver_id)
                    .bind(now)
                    .bind(max)
                    .fetch_all(&mut *tx)
                    .await?;
                let limit = $crate::alerts::model::RateLimit {
                    per_minute: receiver.spec.rate_limit_per_minute,
                };
                let (granted, tokens) = limit.take(receiver.tokens, receiver.tokens_at, now, due.len());
                let limited = granted < due.len();
                let mut claimed = Vec::with_capacity(granted);
                if granted > 0 {
                    let mut update = sqlx::QueryBuilder::<$db>::new("UPDATE alert_deliveries SET state = 'Sending', due_at = ");
                    update.push_bind(lease_until);
                    update.push(", attempts = attempts + 1 WHERE id IN (");
                    let mut list = update.separated(", ");
                    for id in &due[..granted] {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(") RETURNING ");
                    update.push(delivery_columns!());
                    claimed = update
                        .build_query_as::<$crate::model::DeliveryRecord>()
                        .fetch_all(&mut *tx)
                        .await?;
                    claimed.sort_by_key(|d| (d.due_at, d.id));
                    sqlx::query::<$db>("UPDATE alert_receivers SET tokens = $1, tokens_at = $2 WHERE id = $3")
                        .bind(tokens)
                        .bind(now)
                        .bind(receiver_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(Some((receiver, claimed, limited)))
            }

            async fn finish_deliveries(
                &self,
                finished: &[$crate::model::FinishedDelivery],
            ) -> $crate::store::StoreResult<Vec<bool>> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let mut held = Vec::with_capacity(finished.len());
                for f in finished {
                    let ended = f.outcome.state != $crate::lifecycle::DeliveryState::Pending;
                    let done = match f.attempted_at {
                        Some(at) => sqlx::query::<$db>(
                            "UPDATE alert_deliveries SET state = $1, due_at = $2, last_status_code = $3, \
                             last_error = $4, finished_at = $5, last_attempt_at = $6 \
                             WHERE id = $7 AND attempts = $8 AND state = 'Sending'",
                        )
                        .bind(f.outcome.state.as_str())
                        .bind(f.outcome.due_at)
                        .bind(f.outcome.status_code)
                        .bind(&f.outcome.error)
                        .bind(ended.then_some(f.outcome.due_at))
                        .bind(at)
                        .bind(f.id)
                        .bind(f.attempts),
                        // released unattempted: the attempt counted by its lease is given back
                        None => sqlx::query::<$db>(
                            "UPDATE alert_deliveries SET state = $1, due_at = $2, attempts = attempts - 1, \
                             last_error = COALESCE($3, last_error), finished_at = $4 \
                             WHERE id = $5 AND attempts = $6 AND state = 'Sending'",
                        )
                        .bind(f.outcome.state.as_str())
                        .bind(f.outcome.due_at)
                        .bind(&f.outcome.error)
                        .bind(ended.then_some(f.outcome.due_at))
                        .bind(f.id)
                        .bind(f.attempts),
                    }
                    .execute(&mut *tx)
                    .await?;
                    held.push(done.rows_affected() == 1);
                }
                tx.commit().await?;
                Ok(held)
            }

            async fn claim_test_delivery(
                &self,
                receiver_id: i64,
                message: &$crate::alerts::model::Message,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<Result<$crate::model::DeliveryRecord, std::time::Duration>>> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!("SELECT ", receiver_columns!(), " FROM alert_receivers WHERE id = $1", $lock);
                let receiver = sqlx::query_as::<$db, $crate::model::AlertReceiverRecord>(sql)
                    .bind(receiver_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(receiver) = receiver else {
                    return Ok(None);
                };
                let limit = $crate::alerts::model::RateLimit {
                    per_minute: receiver.spec.rate_limit_per_minute,
                };
                let (granted, tokens) = limit.take(receiver.tokens, receiver.tokens_at, now, 1);
                if granted == 0 {
                    tx.commit().await?;
                    return Ok(Some(Err(limit.wait_for_one(tokens))));
                }
                sqlx::query::<$db>("UPDATE alert_receivers SET tokens = $1, tokens_at = $2 WHERE id = $3")
                    .bind(tokens)
                    .bind(now)
                    .bind(receiver_id)
                    .execute(&mut *tx)
                    .await?;
                let sql = concat!(
                    "INSERT INTO alert_deliveries (delivery_id, receiver_id, created_at, state, due_at, attempts, \
                     last_attempt_at, message) VALUES ($1, $2, $3, 'Sending', $4, 1, $3, $5) RETURNING ",
                    delivery_columns!()
                );
                let delivery = sqlx::query_as::<$db, $crate::model::DeliveryRecord>(sql)
                    .bind(&message.id)
                    .bind(receiver_id)
                    .bind(now)
                    .bind(lease_until)
                    .bind(sqlx::types::Json(message))
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(Ok(delivery)))
            }

            async fn prune_alerts(
                &self,
                finished_before: chrono::DateTime<chrono::Utc>,
                quiet_since: chrono::DateTime<chrono::Utc>,
                keep_per_receiver: i64,
            ) -> $crate::store::StoreResult<u64> {
                let mut pruned = sqlx::query::<$db>(
                    "DELETE FROM alert_deliveries WHERE finished_at IS NOT NULL AND finished_at < $1",
                )
                .bind(finished_before)
                .execute(self.writer())
                .await?
                .rows_affected();
                let receivers = sqlx::query_scalar::<$db, i64>("SELECT id FROM alert_receivers")
                    .fetch_all(&self.pool)
                    .await?;
                for receiver in receivers {
                    pruned += sqlx::query::<$db>(
                        "DELETE FROM alert_deliveries WHERE receiver_id = $1 AND finished_at IS NOT NULL AND id < ( \
                         SELECT id FROM alert_deliveries WHERE receiver_id = $1 AND finished_at IS NOT NULL \
                         ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    )
                    .bind(receiver)
                    .bind(keep_per_receiver - 1)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                }
                // a subject quiet for longer than any interval needs no memory of its last message
                pruned += sqlx::query::<$db>(
                    "DELETE FROM alert_throttle WHERE flush_at IS NULL AND (last_sent_at IS NULL OR last_sent_at < $1)",
                )
                .bind(quiet_since)
                .execute(self.writer())
                .await?
                .rows_affected();
                Ok(pruned)
            }

            async fn alert_queues(&self) -> $crate::store::StoreResult<(i64, i64)> {
                Ok(sqlx::query_as::<$db, (i64, i64)>(
                    "SELECT (SELECT COUNT(*) FROM alert_events), \
                     (SELECT COUNT(*) FROM alert_deliveries WHERE state IN ('Pending', 'Sending'))",
                )
                .fetch_one(&self.pool)
                .await?)
            }
        }

        impl $store {
            async fn set_rule_receivers(
                tx: &mut sqlx::Transaction<'_, $db>,
                rule_id: i64,
                receivers: &[i64],
            ) -> Result<(), sqlx::Error> {
                if receivers.is_empty() {
                    return Ok(());
                }
                let mut insert =
                    sqlx::QueryBuilder::<$db>::new("INSERT INTO alert_rule_receivers (rule_id, receiver_id) ");
                insert.push_values(receivers, |mut row, receiver| {
                    row.push_bind(rule_id).push_bind(*receiver);
                });
                insert.push(" ON CONFLICT DO NOTHING");
                insert.build().execute(&mut **tx).await?;
                Ok(())
            }

            /// The rules of the subscriptions the alerts happened in, by subscription key, each with what its
            /// messages name it by.
            async fn matching_rules(
                tx: &mut sqlx::Transaction<'_, $db>,
                alerts: &[$crate::alerts::model::Alert],
            ) -> Result<
                std::collections::BTreeMap<
                    String,
                    Vec<($crate::alerts::model::MatchingRule, $crate::alerts::model::RuleRef)>,
                >,
                sqlx::Error,
            > {
                let subscriptions: std::collections::BTreeSet<&str> =
                    alerts.iter().map(|a| a.scope.subscription_key.as_str()).collect();
                let mut out = std::collections::BTreeMap::new();
                for subscription in subscriptions {
                    let sql = concat!("SELECT ", rule_columns!(), " FROM alert_rules WHERE subscription_key = $1 ORDER BY id");
                    let records = sqlx::query_as::<$db, $crate::model::AlertRuleRecord>(sql)
                        .bind(subscription)
                        .fetch_all(&mut **tx)
                        .await?;
                    let mut rules = Vec::with_capacity(records.len());
                    for record in records.into_iter().filter(|r| r.spec.enabled) {
                        let group = match record.cluster_group_id {
                            None => None,
                            Some(group) => {
                                let found = sqlx::query_as::<$db, (String, sqlx::types::Json<$crate::fleet::selector::LabelSelector>)>(
                                    "SELECT resource_group_key, selector FROM cluster_groups WHERE id = $1",
                                )
                                .bind(group)
                                .fetch_optional(&mut **tx)
                                .await?;
                                match found {
                                    Some((rg, selector)) => Some((rg, selector.0)),
                                    // the foreign key keeps followed groups: not reached
                                    None => continue,
                                }
                            }
                        };
                        let reference = $crate::alerts::model::RuleRef {
                            id: record.arm_id(),
                            name: record.name.clone(),
                        };
                        rules.push((
                            $crate::alerts::model::MatchingRule {
                                id: record.id,
                                resource_group_key: record.resource_group_key,
                                spec: record.spec,
                                group,
                            },
                            reference,
                        ));
                    }
                    out.insert(subscription.to_owned(), rules);
                }
                Ok(out)
            }

            /// The resource group and tags of the clusters the alerts are about, where a rule narrows by them.
            async fn cluster_facts(
                tx: &mut sqlx::Transaction<'_, $db>,
                alerts: &[$crate::alerts::model::Alert],
                rules: &std::collections::BTreeMap<
                    String,
                    Vec<($crate::alerts::model::MatchingRule, $crate::alerts::model::RuleRef)>,
                >,
            ) -> Result<std::collections::BTreeMap<i64, $crate::alerts::model::ClusterFacts>, sqlx::Error> {
                let narrowing: std::collections::BTreeSet<&str> = rules
                    .iter()
                    .filter(|(_, rules)| {
                        rules.iter().any(|(r, _)| r.group.is_some() || r.spec.cluster_selector.is_some())
                    })
                    .map(|(subscription, _)| subscription.as_str())
                    .collect();
                let clusters: std::collections::BTreeSet<i64> = alerts
                    .iter()
                    .filter(|a| narrowing.contains(a.scope.subscription_key.as_str()))
                    .filter_map(|a| a.scope.cluster)
                    .collect();
                let mut out = std::collections::BTreeMap::new();
                let clusters: Vec<i64> = clusters.into_iter().collect();
                for chunk in clusters.chunks($crate::store::fleet::CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, resource_group_key, tags FROM clusters WHERE id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(")");
                    let rows = q
                        .build_query_as::<(i64, String, sqlx::types::Json<std::collections::BTreeMap<String, String>>)>()
                        .fetch_all(&mut **tx)
                        .await?;
                    for (id, resource_group_key, tags) in rows {
                        out.insert(id, $crate::alerts::model::ClusterFacts { resource_group_key, tags: tags.0 });
                    }
                }
                Ok(out)
            }

            /// Applies the rule's minimum interval to its alerts about one subject (in order): answers the
            /// messages that go out now and records the rest as held back until the interval has passed.
            async fn throttle(
                tx: &mut sqlx::Transaction<'_, $db>,
                rule: &$crate::alerts::model::MatchingRule,
                reference: &$crate::alerts::model::RuleRef,
                subject: &str,
                alerts: &[&$crate::alerts::model::Alert],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::alerts::model::Message>, sqlx::Error> {
                if rule.spec.minimum_interval_in_seconds == 0 {
                    // nothing is ever held back: no row to keep (what an earlier interval held is flushed as due)
                    return Ok(alerts
                        .iter()
                        .map(|a| $crate::alerts::model::Message::of(a, reference, rule.spec.severity, None))
                        .collect());
                }
                // one statement creates the subject's row or locks the existing one (an upsert's update locks its
                // row until the transaction ends) and reads it: dispatchers meeting on a subject take turns
                let (mut last_sent, held) = sqlx::query_as::<
                    $db,
                    (Option<chrono::DateTime<chrono::Utc>>, Option<sqlx::types::Json<$crate::alerts::model::Held>>),
                >(
                    "INSERT INTO alert_throttle (rule_id, subject) VALUES ($1, $2) \
                     ON CONFLICT (rule_id, subject) DO UPDATE SET subject = excluded.subject \
                     RETURNING last_sent_at, held",
                )
                .bind(rule.id)
                .bind(subject)
                .fetch_one(&mut **tx)
                .await?;
                let mut held = held.map(|h| h.0);
                let mut flush_at = None;
                let mut out = Vec::new();
                let interval = rule.spec.minimum_interval();
                for alert in alerts {
                    match $crate::alerts::model::hold_until(last_sent, interval, now) {
                        // the interval has passed: this alert goes, with whatever was held back before it
                        None => {
                            let message = match held.take() {
                                Some(before) => $crate::alerts::model::Message::of_held(
                                    &$crate::alerts::model::hold(Some(before), (*alert).clone()),
                                    reference,
                                    rule.spec.severity,
                                ),
                                None => $crate::alerts::model::Message::of(alert, reference, rule.spec.severity, None),
                            };
                            out.push(message);
                            last_sent = Some(now);
                            flush_at = None;
                        }
                        Some(until) => {
                            held = Some($crate::alerts::model::hold(held.take(), (*alert).clone()));
                            flush_at = Some(until);
                        }
                    }
                }
                sqlx::query::<$db>(
                    "UPDATE alert_throttle SET last_sent_at = $1, held = $2, flush_at = $3 \
                     WHERE rule_id = $4 AND subject = $5",
                )
                .bind(last_sent)
                .bind(held.as_ref().map(sqlx::types::Json))
                .bind(flush_at)
                .bind(rule.id)
                .bind(subject)
                .execute(&mut **tx)
                .await?;
                Ok(out)
            }

            /// Queues each message for each receiver of its rule, within each receiver's backlog: what does not
            /// fit is counted on the receiver as dropped.
            async fn queue_messages(
                tx: &mut sqlx::Transaction<'_, $db>,
                messages: Vec<(i64, $crate::alerts::model::Message)>,
                now: chrono::DateTime<chrono::Utc>,
                backlog_limit: i64,
                done: &mut $crate::model::Dispatched,
            ) -> Result<(), sqlx::Error> {
                if messages.is_empty() {
                    return Ok(());
                }
                let mut receivers_of: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
                let mut backlog: std::collections::BTreeMap<i64, i64> = Default::default();
                let mut rows: Vec<(i64, i64, $crate::alerts::model::Message)> = Vec::new();
                let mut dropped: std::collections::BTreeMap<i64, u64> = Default::default();
                for (rule_id, message) in messages {
                    if !receivers_of.contains_key(&rule_id) {
                        let receivers = sqlx::query_scalar::<$db, i64>(
                            "SELECT receiver_id FROM alert_rule_receivers WHERE rule_id = $1 ORDER BY receiver_id",
                        )
                        .bind(rule_id)
                        .fetch_all(&mut **tx)
                        .await?;
                        receivers_of.insert(rule_id, receivers);
                    }
                    for receiver in receivers_of[&rule_id].clone() {
                        if !backlog.contains_key(&receiver) {
                            let waiting = sqlx::query_scalar::<$db, i64>(
                                "SELECT COUNT(*) FROM alert_deliveries WHERE receiver_id = $1 \
                                 AND state IN ('Pending', 'Sending')",
                            )
                            .bind(receiver)
                            .fetch_one(&mut **tx)
                            .await?;
                            backlog.insert(receiver, waiting);
                        }
                        let waiting = backlog.get_mut(&receiver).expect("counted above");
                        if *waiting >= backlog_limit {
                            *dropped.entry(receiver).or_default() += 1;
                            continue;
                        }
                        *waiting += 1;
                        let mut message = message.clone();
                        // each receiver's copy has its own delivery id
                        message.id = uuid::Uuid::new_v4().to_string();
                        rows.push((receiver, rule_id, message));
                    }
                }
                done.queued += rows.len();
                for chunk in rows.chunks(500) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO alert_deliveries (delivery_id, receiver_id, rule_id, created_at, state, due_at, \
                         message) ",
                    );
                    insert.push_values(chunk, |mut row, (receiver, rule, message)| {
                        row.push_bind(message.id.clone())
                            .push_bind(*receiver)
                            .push_bind(*rule)
                            .push_bind(now)
                            .push_bind($crate::lifecycle::DeliveryState::Pending.as_str())
                            .push_bind(now)
                            .push_bind(sqlx::types::Json(message.clone()));
                    });
                    insert.build().execute(&mut **tx).await?;
                }
                for (receiver, count) in &dropped {
                    sqlx::query::<$db>(
                        "UPDATE alert_receivers SET dropped = dropped + $1, dropped_at = $2 WHERE id = $3",
                    )
                    .bind(*count as i64)
                    .bind(now)
                    .bind(*receiver)
                    .execute(&mut **tx)
                    .await?;
                }
                done.dropped = dropped.into_iter().collect();
                Ok(())
            }

            /// Queues the alert a rollout transition is, if it is one and the subscription has alert rules (in
            /// the transaction that moves the rollout).
            async fn queue_rollout_alert(
                tx: &mut sqlx::Transaction<'_, $db>,
                a: &$crate::model::PolicyAssignmentRecord,
                e: &$crate::fleet::assignments::rollout::RolloutEvent,
            ) -> Result<(), sqlx::Error> {
                if $crate::alerts::model::EventType::of_rollout(e.event).is_none() {
                    return Ok(());
                }
                let facts = $crate::alerts::model::RolloutFacts {
                    event: e.event.to_owned(),
                    generation: e.generation,
                    batch: e.batch as i64 + 1,
                    batches: e.batches as i64,
                    message: e.message.clone(),
                };
                sqlx::query::<$db>(
                    "INSERT INTO alert_events (kind, subscription_key, resource_group_key, policy_assignment, facts) \
                     SELECT 'rollout', $1, $2, $3, $4 \
                     WHERE EXISTS (SELECT 1 FROM alert_rules WHERE subscription_key = $1)",
                )
                .bind(&a.subscription_key)
                .bind(&a.resource_group_key)
                .bind(a.arm_id())
                .bind(sqlx::types::Json(facts))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Queues the alert of an expiry (in the transaction that fails the configuration or extension), if
            /// its subscription has alert rules.
            async fn queue_expiry_alert(
                tx: &mut sqlx::Transaction<'_, $db>,
                expired: &$crate::model::Expired,
                message: &str,
            ) -> Result<(), sqlx::Error> {
                let facts = $crate::alerts::model::ExpiryFacts {
                    secrets: expired.secrets,
                    generation: expired.generation,
                    message: message.to_owned(),
                };
                sqlx::query::<$db>(
                    "INSERT INTO alert_events (kind, subscription_key, resource_group_key, cluster_id, cluster_path, \
                     name, policy_assignment, facts) \
                     SELECT 'expiry', c.subscription_key, c.resource_group_key, c.id, \
                     c.subscription || '/' || c.resource_group || '/' || c.name, $2, \
                     COALESCE((SELECT f.managed_by_id FROM flux_configurations f WHERE f.cluster_id = c.id \
                     AND f.name = $2), ''), $3 \
                     FROM clusters c WHERE c.id = $1 \
                     AND EXISTS (SELECT 1 FROM alert_rules r WHERE r.subscription_key = c.subscription_key)",
                )
                .bind(expired.cluster_id)
                .bind(&expired.name)
                .bind(sqlx::types::Json(facts))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
        }
    };
}

pub(super) use {alerts_store, delivery_columns, receiver_columns, rule_columns};
