-- A month of history of a 10,000-cluster fleet, synthesised on a database migrated by fluxplane, then the history's
-- read shapes timed with EXPLAIN ANALYZE (a check by hand, beside fluxplane-bench: docs/benchmarks/).
--
--   createdb history_month; fluxplane serve --database-url postgres://postgres@127.0.0.1/history_month (migrates;
--   stop it with Ctrl-C)
--   psql -h 127.0.0.1 -U postgres -d history_month -f bench/sql/history-month.sql
--
-- 100,000 configurations (10 per cluster) with three status transitions a day each for 30 days: 9 million status
-- rows, 18 million instance deltas (each transition leaves one state and enters another), 600,000 writes.
\timing on
SET maintenance_work_mem = '256MB';

INSERT INTO status_history (at, configuration_id, cluster_id, subscription_key, resource_group_key, cluster_path,
                            name, policy_assignment, event, generation, reported_generation, compliance_state,
                            provisioning_state, commit_id, message)
SELECT now() - interval '30 days' + (n * interval '30 days' / 9000000),
       (n % 100000) + 1, (n % 100000) / 10 + 1, 'bench', 'rg-' || ((n % 100000) / 1000),
       'bench/rg-' || ((n % 100000) / 1000) || '/c-' || ((n % 100000) / 10), 'app-' || (n % 10),
       CASE WHEN n % 10 < 5 THEN '/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/a-' || (n % 10)
            ELSE '' END,
       'Updated', n / 100000 + 1, n / 100000 + 1,
       (ARRAY['Compliant', 'Non-Compliant', 'Pending'])[1 + n % 3], 'Succeeded', 'main@sha1:abc', NULL
FROM generate_series(0, 8999999) n;

INSERT INTO instance_delta_history (at, subscription_key, resource_group_key, policy_assignment,
                                    compliance_state, provisioning_state, reported, instances)
SELECT now() - interval '30 days' + (n * interval '30 days' / 18000000), 'bench',
       'rg-' || ((n / 2 % 100000) / 1000), '', (ARRAY['Compliant', 'Non-Compliant', 'Pending'])[1 + n % 3],
       'Succeeded', TRUE, CASE WHEN n % 2 = 0 THEN 1 ELSE -1 END
FROM generate_series(0, 17999999) n;

INSERT INTO write_history (at, subscription_key, resource_key, resource_id, actor, action, status_code)
SELECT now() - interval '30 days' + (n * interval '30 days' / 600000), 'bench',
       'subscriptions/bench/resourcegroups/rg-' || ((n % 100000) / 1000) || '/c-' || ((n % 100000) / 10),
       '/subscriptions/bench/resourceGroups/rg-' || ((n % 100000) / 1000) || '/c-' || ((n % 100000) / 10),
       'ci@example.com', 'PUT', 200
FROM generate_series(0, 599999) n;
VACUUM ANALYZE status_history, instance_delta_history, write_history;

SELECT pg_size_pretty(pg_total_relation_size('status_history')) AS status_history,
       pg_size_pretty(pg_total_relation_size('instance_delta_history')) AS instance_delta_history,
       pg_size_pretty(pg_relation_size('status_history_at')) AS status_brin;

-- one configuration's last day (the UI's drill-down)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM status_history
WHERE cluster_id = 4242 AND name = 'app-3' AND at >= now() - interval '1 day' AND at < now() AND id > 0
ORDER BY id LIMIT 1001;
-- one cluster's last day
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM status_history
WHERE cluster_id = 4242 AND at >= now() - interval '1 day' AND at < now() AND id > 0 ORDER BY id LIMIT 1001;
-- one assignment's last hour (5,000 clusters' worth)
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM status_history
WHERE policy_assignment = '/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/a-3'
  AND at >= now() - interval '1 hour' AND at < now() AND id > 0 ORDER BY id LIMIT 1001;
-- the live stream's tail
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM status_history
WHERE id > (SELECT max(id) - 500 FROM status_history) ORDER BY id LIMIT 1000;
-- the summary as of a day ago: the deltas since
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT policy_assignment, compliance_state, provisioning_state, reported,
       SUM(-instances) FROM instance_delta_history WHERE at > now() - interval '1 day' AND subscription_key = 'bench'
GROUP BY 1, 2, 3, 4;
-- a cluster's writes
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM write_history
WHERE (resource_key = 'subscriptions/bench/resourcegroups/rg-42/c-4242'
       OR (resource_key >= 'subscriptions/bench/resourcegroups/rg-42/c-4242/'
           AND resource_key < 'subscriptions/bench/resourcegroups/rg-42/c-42420'))
  AND at >= now() - interval '1 day' AND at < now() AND id > 0 ORDER BY id LIMIT 1001;
-- the retention's daily prune
BEGIN;
EXPLAIN (ANALYZE, COSTS OFF) DELETE FROM status_history WHERE at < now() - interval '29 days';
EXPLAIN (ANALYZE, COSTS OFF) DELETE FROM instance_delta_history WHERE at < now() - interval '29 days';
ROLLBACK;
