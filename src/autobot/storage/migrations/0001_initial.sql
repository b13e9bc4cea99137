-- Conversation files: the five tables, their indexes, three triggers and three views.
-- Applied once by autobot.storage.migrate inside BEGIN IMMEDIATE; never edit an applied migration,
-- add 0002_<name>.sql instead. No "IF NOT EXISTS": the runner guarantees each file runs exactly once,
-- and a clash must fail loudly instead of silently keeping a different old definition.
-- Stricter than AutoBot's original where a NULL would be a bug: NOT NULL on the text primary key and on
-- the 0/1 flags (a NULL passes "IN (0, 1)"), and a CHECK on association_type.

CREATE TABLE conversation_files (
    file_id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL,
    original_filename TEXT NOT NULL,
    stored_filename TEXT NOT NULL UNIQUE,
    file_path TEXT NOT NULL,
    file_size INTEGER NOT NULL CHECK (file_size >= 0),
    file_hash TEXT NOT NULL,
    mime_type TEXT,
    uploaded_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    uploaded_by TEXT,
    is_deleted INTEGER NOT NULL DEFAULT 0 CHECK (is_deleted IN (0, 1)),
    deleted_at TIMESTAMP NULL
);

CREATE TABLE file_metadata (
    metadata_id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id TEXT NOT NULL REFERENCES conversation_files (file_id) ON DELETE CASCADE,
    metadata_key TEXT NOT NULL,
    metadata_value TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (file_id, metadata_key)
);

CREATE TABLE session_file_associations (
    association_id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    file_id TEXT NOT NULL REFERENCES conversation_files (file_id) ON DELETE CASCADE,
    association_type TEXT NOT NULL DEFAULT 'upload'
        CHECK (association_type IN ('upload', 'reference', 'generated')),
    message_id TEXT,
    associated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (session_id, file_id, message_id)
);

CREATE TABLE file_access_log (
    log_id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id TEXT NOT NULL REFERENCES conversation_files (file_id) ON DELETE CASCADE,
    access_type TEXT NOT NULL CHECK (access_type IN ('upload', 'download', 'view', 'delete', 'restore')),
    accessed_by TEXT,
    accessed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    access_metadata TEXT -- JSON object
);

CREATE TABLE file_cleanup_queue (
    cleanup_id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id TEXT NOT NULL REFERENCES conversation_files (file_id) ON DELETE CASCADE,
    session_id TEXT NOT NULL,
    scheduled_deletion_time TIMESTAMP NOT NULL,
    cleanup_reason TEXT DEFAULT 'session_ended'
        CHECK (cleanup_reason IN ('session_ended', 'user_request', 'expired', 'space_limit')),
    is_processed INTEGER NOT NULL DEFAULT 0 CHECK (is_processed IN (0, 1)),
    processed_at TIMESTAMP NULL
);

CREATE INDEX idx_conversation_files_session ON conversation_files (session_id, is_deleted);
CREATE INDEX idx_conversation_files_hash ON conversation_files (file_hash, is_deleted);
CREATE INDEX idx_conversation_files_uploaded ON conversation_files (uploaded_at DESC);
CREATE INDEX idx_file_metadata_file ON file_metadata (file_id);
CREATE INDEX idx_session_file_associations_session ON session_file_associations (session_id);
CREATE INDEX idx_session_file_associations_file ON session_file_associations (file_id);
CREATE INDEX idx_file_access_log_file ON file_access_log (file_id, accessed_at DESC);
CREATE INDEX idx_file_cleanup_queue_pending ON file_cleanup_queue (is_processed, scheduled_deletion_time);

-- Soft delete stamps deleted_at; a restore (1 -> 0) clears it so the column never lies.
CREATE TRIGGER trg_conversation_files_soft_delete
AFTER UPDATE OF is_deleted ON conversation_files
FOR EACH ROW WHEN OLD.is_deleted IS NOT NEW.is_deleted
BEGIN
    UPDATE conversation_files
    SET deleted_at = CASE WHEN NEW.is_deleted = 1 THEN CURRENT_TIMESTAMP ELSE NULL END
    WHERE file_id = NEW.file_id;
END;

CREATE TRIGGER trg_conversation_files_upload_log
AFTER INSERT ON conversation_files
FOR EACH ROW
BEGIN
    INSERT INTO file_access_log (file_id, access_type, accessed_by, access_metadata)
    VALUES (NEW.file_id, 'upload', NEW.uploaded_by,
            json_object('file_size', NEW.file_size, 'mime_type', NEW.mime_type));
END;

CREATE TRIGGER trg_session_file_associations_schedule_cleanup
AFTER INSERT ON session_file_associations
FOR EACH ROW
BEGIN
    INSERT INTO file_cleanup_queue (file_id, session_id, scheduled_deletion_time, cleanup_reason)
    VALUES (NEW.file_id, NEW.session_id, datetime('now', '+30 days'), 'session_ended');
END;

CREATE VIEW v_active_files AS
SELECT
    f.file_id,
    f.session_id,
    f.original_filename,
    f.file_size,
    f.file_hash,
    f.mime_type,
    f.uploaded_at,
    f.uploaded_by,
    COUNT(DISTINCT a.session_id) AS session_count,
    MAX(a.associated_at) AS last_associated_at
FROM conversation_files AS f
LEFT JOIN session_file_associations AS a ON a.file_id = f.file_id
WHERE f.is_deleted = 0
GROUP BY f.file_id;

-- One row per (session, file) first, so a file associated twice with a session (several messages)
-- is counted and sized once.
CREATE VIEW v_session_file_summary AS
SELECT
    s.session_id,
    COUNT(*) AS file_count,
    SUM(f.file_size) AS total_size,
    MIN(s.first_associated_at) AS first_file_added,
    MAX(s.last_associated_at) AS last_file_added
FROM (
    SELECT session_id, file_id,
           MIN(associated_at) AS first_associated_at,
           MAX(associated_at) AS last_associated_at
    FROM session_file_associations
    GROUP BY session_id, file_id
) AS s
JOIN conversation_files AS f ON f.file_id = s.file_id
WHERE f.is_deleted = 0
GROUP BY s.session_id;

CREATE VIEW v_pending_cleanups AS
SELECT
    q.cleanup_id,
    q.file_id,
    q.session_id,
    f.original_filename,
    f.file_size,
    q.scheduled_deletion_time,
    q.cleanup_reason,
    CAST(ROUND((julianday(q.scheduled_deletion_time) - julianday('now')) * 1440) AS INTEGER)
        AS minutes_until_deletion
FROM file_cleanup_queue AS q
JOIN conversation_files AS f ON f.file_id = q.file_id
WHERE q.is_processed = 0
  AND q.scheduled_deletion_time <= datetime('now', '+7 days')
ORDER BY q.scheduled_deletion_time;
