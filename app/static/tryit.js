// The job page's "Try it" box: POST the prompt (with the page's CSRF token) and append the streamed
// chat-completion chunks (`data: {...}` lines, ending with `data: [DONE]`) to the output as they arrive.
(function () {
  const box = document.getElementById("try-it");
  if (!box) return;
  const form = document.getElementById("try-form");
  const output = document.getElementById("try-output");
  const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];

  function handle(line) {
    if (!line.startsWith("data: ")) return;
    const data = line.slice(6);
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) { output.textContent += "\n[error] " + chunk.error.message; return; }
    for (const choice of chunk.choices) output.textContent += choice.delta.content || "";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    output.textContent = "";
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const response = await fetch(box.dataset.url, {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({prompt: document.getElementById("try-prompt").value}),
      });
      if (!response.ok) {
        output.textContent = "[error] HTTP " + response.status;
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        const lines = buffer.split("\n");
        buffer = lines.pop();
        lines.forEach(handle);
      }
    } finally {
      button.disabled = false;
    }
  });
})();
