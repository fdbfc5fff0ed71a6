PRAGMA defer_foreign_keys=TRUE;
CREATE TABLE d1_migrations(
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		name       TEXT UNIQUE,
		applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
);
INSERT INTO "d1_migrations" ("id","name","applied_at") VALUES(1,'0001_initial_schema.sql','2025-01-14 17:52:08');
CREATE TABLE _cf_KV (
        key TEXT PRIMARY KEY,
        value BLOB
      ) WITHOUT ROWID;
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    job_hash TEXT NOT NULL UNIQUE,
    job_type TEXT NOT NULL,
    input_params TEXT NOT NULL,
    status TEXT NOT NULL CHECK(status IN ('pending', 'claimed', 'in_progress', 'completed', 'failed', 'expired')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    claimed_by TEXT,
    claimed_at INTEGER,
    progress_current INTEGER,
    progress_total INTEGER,
    console_output TEXT DEFAULT '',
    output_data TEXT,
    error_message TEXT,
    last_heartbeat INTEGER,
    FOREIGN KEY (claimed_by) REFERENCES runners(id)
);
INSERT INTO "jobs" ("id","job_hash","job_type","input_params","status","created_at","updated_at","claimed_by","claimed_at","progress_current","progress_total","console_output","output_data","error_message","last_heartbeat") VALUES('ae87dfe9-0e0e-4a3e-9115-80c9fc686d5b','d61f3505bd8aaba891e143b29a1028b1d07d6d26ebc7d5aefbecf72a31268448','hello_world','{"processing_time":60,"name":"Alice"}','completed',1736877131482,1736877195907,'73ac3dbb-f8f8-45ac-b168-df51cd1f6ff3',1736877133015,60,60,replace('Starting hello_world job\nProcessing for 60 seconds...\nHello, Alice!\n','\n',char(10)),'{"message":"Hello, Alice!","processing_time":60}',NULL,1736877195907);
INSERT INTO "jobs" ("id","job_hash","job_type","input_params","status","created_at","updated_at","claimed_by","claimed_at","progress_current","progress_total","console_output","output_data","error_message","last_heartbeat") VALUES('372b9dba-4648-451a-a9b9-04893a41e8c8','e48980bf3629310805af360903386f012ac61a48e4e6a7f0df2c1eec6959299b','figpack_nwb_raster_plot','{"nwb_url":"https://api.dandiarchive.org/api/assets/3919ebaa-d727-40b1-a8a0-ffac92ef81f1/download/","units_path":"/units"}','completed',1737020412077,1737020538214,'ea8af79a-6aa9-4be6-9dfa-bf3ce590d409',1737020414390,NULL,NULL,replace('Loading NWB file from https://api.dandiarchive.org/api/assets/3919ebaa-d727-40b1-a8a0-ffac92ef81f1/download/\nReading /units (87 units)\nBuilding raster plot...\nUploading figure to figpack...\nUpload complete: https://figures.figpack.org/figures/default/3f9c2a7e1b4d/index.html\n','\n',char(10)),'{"figpack_url":"https://figures.figpack.org/figures/default/3f9c2a7e1b4d/index.html","figure":{"title":"Raster plot — /units","num_units":87,"time_range":[0.0,3127.5]},"upload":{"bucket":"figpack-figures","files":12,"total_bytes":4839211,"manifest":{"version":"1","entries":["index.html","data.zarr/.zattrs"]}}}',NULL,1737020538214);
INSERT INTO "jobs" ("id","job_hash","job_type","input_params","status","created_at","updated_at","claimed_by","claimed_at","progress_current","progress_total","console_output","output_data","error_message","last_heartbeat") VALUES('d7cf33c0-f93a-4f60-ad3b-c4180836ee1d','3d1f62cbc8d4fb382fb731aab0a285e1afc173c0e5b2874d9ea0a833bc22cac3','hello_world','{"name":"O''Brien","processing_time":-1}','failed',1737103385230,1737103386914,'73ac3dbb-f8f8-45ac-b168-df51cd1f6ff3',1737103386001,NULL,NULL,replace('Starting hello_world job\nTraceback (most recent call last):\n  File "hello_world.py", line 18, in execute\nValueError: processing_time can''t be negative\n','\n',char(10)),NULL,'ValueError: processing_time can''t be negative (got -1) for O''Brien',1737103386914);
INSERT INTO "jobs" ("id","job_hash","job_type","input_params","status","created_at","updated_at","claimed_by","claimed_at","progress_current","progress_total","console_output","output_data","error_message","last_heartbeat") VALUES('67c3ab4b-2ef3-4daa-9d26-5e13d3f2f898','26d8a46c43937165285f1962655074867a3a0e780e3e0f2c1a150be552719805','hello_world','{"name":"Zoë — 日本語 🚀","processing_time":5,"options":{"greeting":"Grüß dich","repeat":2,"tags":["ünïcode","ok"]}}','pending',1737190230144,1737190230144,NULL,NULL,NULL,NULL,'',NULL,NULL,NULL);
INSERT INTO "jobs" ("id","job_hash","job_type","input_params","status","created_at","updated_at","claimed_by","claimed_at","progress_current","progress_total","console_output","output_data","error_message","last_heartbeat") VALUES('8bb63669-b628-43b7-bbf2-0d18932017f9','0bb3df8e4ad731cd5163aa044c7def5a128e0e214208ac14fc80c746f666f45b','hello_world','{"name":"Long run","processing_time":600}','in_progress',1737190301512,1737190424088,'73ac3dbb-f8f8-45ac-b168-df51cd1f6ff3',1737190302744,120,600,replace('Starting hello_world job\nProcessing for 600 seconds...\n','\n',char(10)),NULL,NULL,1737190424088);
INSERT INTO "jobs" ("id","job_hash","job_type","input_params","status","created_at","updated_at","claimed_by","claimed_at","progress_current","progress_total","console_output","output_data","error_message","last_heartbeat") VALUES('7c626bab-d089-48da-b1f8-dea0ad81c87f','ea72057b60910797e1efc6659b3f8c130b30427df24185f43b0d7080f022e233','figpack_nwb_units_summary','{"nwb_url":"https://api.dandiarchive.org/api/assets/0c1fbd5c-64f4-4a1a-9d2a-3a1d0d8e8c4b/download/","units_path":"/units","options":{"max_units":50,"sort_by":"firing_rate"}}','claimed',1737190355820,1737190356377,'ea8af79a-6aa9-4be6-9dfa-bf3ce590d409',1737190356377,NULL,NULL,'',NULL,NULL,1737190356377);
CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
INSERT INTO "runners" ("id","name","capabilities","registered_at","last_seen") VALUES('73ac3dbb-f8f8-45ac-b168-df51cd1f6ff3','lab-workstation-01','["hello_world"]',1736876990115,1737190424088);
INSERT INTO "runners" ("id","name","capabilities","registered_at","last_seen") VALUES('ea8af79a-6aa9-4be6-9dfa-bf3ce590d409','Jérémy''s figpack box','["figpack_nwb_raster_plot","figpack_nwb_units_summary","figpack_nwb_video_preview"]',1737019874502,1737190356377);
DELETE FROM sqlite_sequence;
INSERT INTO "sqlite_sequence" ("name","seq") VALUES('d1_migrations',1);
CREATE INDEX idx_jobs_hash ON jobs(job_hash);
CREATE INDEX idx_jobs_status ON jobs(status);
CREATE INDEX idx_jobs_type ON jobs(job_type);
CREATE INDEX idx_jobs_claimed_by ON jobs(claimed_by);
CREATE INDEX idx_runners_last_seen ON runners(last_seen);
