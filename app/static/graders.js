// The new-job form's grader card: show the fields of the chosen grader type, and the "Test the grader"
// panel: POST the grader fields with a sample and an item (and the page's CSRF token) to /ui/graders/run
// and show the HTML fragment it answers (reward, error flags, sub-rewards). The job is not submitted.
(function () {
  const panel = document.getElementById("grader-test");
  if (!panel) return;
  const form = panel.closest("form");
  const type = document.getElementById("grader_type");
  const json = document.getElementById("grader_json");
  const item = document.getElementById("test_item");
  const result = document.getElementById("grader-test-result");
  const button = document.getElementById("grader-test-button");
  const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];

  function showFields() {
    for (const field of document.querySelectorAll("#grader [data-grader-types]")) {
      field.hidden = !field.dataset.graderTypes.split(" ").includes(type.value);
    }
    if (type.value === "json" && !json.value.trim()) json.value = JSON.stringify(fieldsGrader(), null, 2);
  }

  // Switching to JSON starts from the grader the fields described (the other way round needs no help).
  function fieldsGrader() {
    const kind = form.dataset.lastType || "string_check";
    const grader = {type: kind, name: kind};
    for (const field of document.querySelectorAll(`#grader [data-grader-types~="${kind}"] [name]`)) {
      grader[field.name.replace(/^grader_/, "")] = field.value;
    }
    return grader;
  }

  // The item is prefilled from the training file's first line, until the user edits it.
  let prefilled = item.value.trim() === "{}" ? item.value : null;
  function prefill(text) {
    if (prefilled === null || item.value !== prefilled) return;
    item.value = prefilled = text;
  }
  document.getElementById("training_file_upload").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const head = await file.slice(0, 1 << 20).text();
    const line = head.split("\n").find((l) => l.trim());
    try {
      const {messages, ...fields} = JSON.parse(line);  // the fields graders read first, the prompt last
      prefill(JSON.stringify(messages === undefined ? fields : {...fields, messages}, null, 2));
    } catch (_) { /* the upload itself will report the bad line */ }
  });
  document.getElementById("training_file").addEventListener("change", (event) => {
    // an uploaded file: its fields are known (on every line), its values are not
    const option = event.target.selectedOptions[0];
    const fields = option && option.dataset.fields ? JSON.parse(option.dataset.fields) : [];
    const skeleton = Object.fromEntries(fields.filter((f) => f !== "messages").map((f) => [f, ""]));
    prefill(JSON.stringify(skeleton, null, 2));
  });

  function markInvalid(name) {
    for (const field of document.querySelectorAll("#grader .field, #grader-test .field")) {
      field.classList.toggle("invalid", Boolean(name) && field.querySelector(`[name="${name}"]`) !== null);
    }
  }

  async function test() {
    const body = new URLSearchParams();
    for (const [name, entry] of new FormData(form)) {
      if (typeof entry === "string" && (name.startsWith("grader_") || name.startsWith("test_"))) {
        body.append(name, entry);
      }
    }
    button.disabled = true;
    result.textContent = "Grading…";
    try {
      const response = await fetch(panel.dataset.url, {
        method: "POST",
        headers: {"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
        body,
      });
      const contentType = response.headers.get("content-type") || "";
      if ((response.ok || response.status === 400) && contentType.startsWith("text/html")) {
        result.innerHTML = await response.text();  // rendered and escaped by the server
        const alert = result.querySelector("[data-field]");
        markInvalid(alert ? alert.dataset.field : null);
        return;
      }
      const messages = {
        401: "Your session has ended: sign in again.",
        403: "The page is stale: reload it and retry.",
        429: "Too many grader tests this minute: wait " + (response.headers.get("retry-after") || "a few")
          + " s and retry.",
      };
      result.textContent = messages[response.status] || "The test failed: HTTP " + response.status;
    } catch (error) {
      result.textContent = "The server could not be reached: " + error.message;
    } finally {
      button.disabled = false;
    }
  }

  type.addEventListener("change", () => { showFields(); form.dataset.lastType = type.value; });
  form.dataset.lastType = type.value;
  button.addEventListener("click", test);
  showFields();
})();
