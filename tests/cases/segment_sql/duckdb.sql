SELECT
  "c"."contact_id",
  "c"."state"
FROM "crm"."crm_contacts" AS c
LEFT JOIN (
  SELECT
    "e"."contact_id",
    SUM(
      CASE
        WHEN "e"."event_type" = 'visit'
        AND (
          "e"."event_time" >= CAST('2023-12-01 00:00:00+00:00' AS TIMESTAMPTZ)
          AND "e"."event_time" < CAST('2024-03-01 00:00:00+00:00' AS TIMESTAMPTZ)
        )
        AND (
          "e"."department" = 'cardiology'
        )
        THEN 1
        ELSE 0
      END
    ) AS "count_0",
    MAX(
      CASE
        WHEN "e"."event_type" = 'visit'
        AND "e"."event_time" < CAST('2024-03-01 00:00:00+00:00' AS TIMESTAMPTZ)
        THEN "e"."event_time"
      END
    ) AS "last_0"
  FROM "crm"."crm_events" AS e
  WHERE
    (
      "e"."event_type" = 'visit'
      AND (
        "e"."event_time" >= CAST('2023-12-01 00:00:00+00:00' AS TIMESTAMPTZ)
        AND "e"."event_time" < CAST('2024-03-01 00:00:00+00:00' AS TIMESTAMPTZ)
      )
      AND (
        "e"."department" = 'cardiology'
      )
    )
    OR (
      "e"."event_type" = 'visit'
      AND "e"."event_time" < CAST('2024-03-01 00:00:00+00:00' AS TIMESTAMPTZ)
    )
  GROUP BY
    "e"."contact_id"
) AS a
  ON "c"."contact_id" = "a"."contact_id"
WHERE
  (
    "c"."state" IN ('NY', 'O''Brien') OR STARTS_WITH("c"."state", 'N')
  )
  AND (
    (
      "c"."birth_date" < CAST('1974-03-01' AS DATE)
      AND "c"."birth_date" >= CAST('1959-03-01' AS DATE)
    )
    OR "c"."created_at" < CAST('2022-03-02 00:00:00' AS TIMESTAMP)
    OR CASE
      WHEN "c"."codes" IS NULL
      THEN NULL
      ELSE EXISTS(
        SELECT
          1
        FROM UNNEST("c"."codes") AS _u1(_x1)
        WHERE
          "_u1"."_x1" = 'I25.10' OR STARTS_WITH("_u1"."_x1", 'E11')
      )
    END
    OR COALESCE("a"."count_0", 0) >= 2
    OR "a"."last_0" >= CAST('2022-09-08 00:00:00+00:00' AS TIMESTAMPTZ)
  )
  AND EXISTS(
    SELECT
      1
    FROM "crm"."crm_events" AS e
    WHERE
      "e"."contact_id" = "c"."contact_id"
      AND (
        "e"."event_type" = 'appointment'
        AND (
          "e"."event_time" >= CAST('2024-03-01 00:00:00+00:00' AS TIMESTAMPTZ)
          AND "e"."event_time" < CAST('2024-03-31 00:00:00+00:00' AS TIMESTAMPTZ)
        )
      )
  )
  AND NOT (
    "c"."score" < 0
  )
  AND NOT EXISTS(
    SELECT
      1
    FROM "crm"."crm_events" AS e
    WHERE
      "e"."contact_id" = "c"."contact_id"
      AND (
        "e"."event_type" IN ('complaint', 'optout')
        AND (
          "e"."event_time" >= CAST('2024-02-29 00:00:00+00:00' AS TIMESTAMPTZ)
          AND "e"."event_time" < CAST('2025-01-01 00:00:00+00:00' AS TIMESTAMPTZ)
        )
      )
  )
