// The conversation's files: list, upload (multipart, field "file"), download link, delete.
import { api } from "./api.js";
import { describeError } from "./errors.js";
import { byId, el, clear } from "./dom.js";
import { formatBytes, formatTime } from "./format.js";

export class FilesPanel {
  // ensureSession(): the open session's id, creating one if none is open (an upload needs a session).
  constructor({ ensureSession, currentId, onError }) {
    this.ensureSession = ensureSession;
    this.currentId = currentId;
    this.onError = onError;
    this.list = byId("file-list");
    this.status = byId("files-status");
    this.form = byId("upload-form");
    this.input = byId("file-input");
    this.button = byId("upload-button");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.upload();
    });
  }

  say(text, kind = "info") {
    this.status.textContent = text;
    this.status.dataset.kind = kind;
  }

  async refresh() {
    const id = this.currentId();
    clear(this.list);
    if (!id) {
      this.say("No files yet. Uploading one starts a conversation.");
      return;
    }
    try {
      const { files } = await api.files(id);
      this.render(id, files);
    } catch (err) {
      this.fail(err, "Could not list the files");
    }
  }

  render(sessionId, files) {
    clear(this.list);
    for (const file of files) {
      const name = file.original_filename || file.file_id;
      const link = el("a", {
        class: "file-name",
        text: name,
        attrs: { href: api.fileUrl(sessionId, file.file_id), download: name },
      });
      const details = el("span", {
        class: "file-details",
        text: `${formatBytes(file.file_size)} · ${formatTime(file.uploaded_at)}`,
      });
      const remove = el("button", {
        class: "button-small button-danger",
        text: "Delete",
        attrs: { type: "button", "aria-label": `Delete file ${name}` },
        on: { click: () => this.remove(sessionId, file.file_id, name) },
      });
      this.list.append(el("li", { class: "file", attrs: { "data-file-id": file.file_id } }, link, details, remove));
    }
    if (files.length === 0) this.say("No files in this conversation.");
  }

  async upload() {
    const file = this.input.files?.[0];
    if (!file) {
      this.say("Choose a file first.", "error");
      this.input.focus();
      return;
    }
    this.button.disabled = true;
    this.say(`Uploading ${file.name}…`);
    try {
      const id = await this.ensureSession();
      const record = await api.upload(id, file);
      this.form.reset();
      await this.refresh();
      this.say(`Uploaded ${record.original_filename} (${formatBytes(record.file_size)}).`, "ok");
    } catch (err) {
      this.fail(err, `Could not upload ${file.name}`);
    } finally {
      this.button.disabled = false;
      this.input.focus();
    }
  }

  async remove(sessionId, fileId, name) {
    if (!window.confirm(`Delete the file "${name}" from this conversation?`)) return;
    try {
      await api.deleteFile(sessionId, fileId);
      await this.refresh();
      this.say(`Deleted ${name}.`, "ok");
    } catch (err) {
      this.fail(err, `Could not delete ${name}`);
    }
    this.input.focus();
  }

  fail(err, what) {
    const info = describeError(err);
    this.say(`${what}: ${info.message}`, "error");
    this.onError(err, info);
  }
}
