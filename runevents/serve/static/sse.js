// Server-Sent Events read from a fetch() response: unlike an EventSource, fetch can send an
// Authorization header, and the server takes no token in the query string.

// The events of a text/event-stream body, as {event, data, id}; comments (the pings) are skipped.
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let fields = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A chunk may end between the \r and the \n of one line break: keep that \r for the next one.
      const complete = buffer.endsWith("\r") ? buffer.slice(0, -1) : buffer;
      const lines = complete.split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(complete.length);
      for (const line of lines) {
        if (line === "") {
          if (fields.data.length) yield { event: fields.event, data: fields.data.join("\n"), id: fields.id };
          fields = { event: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (name === "data") fields.data.push(value);
          else if (name === "event" || name === "id") fields[name] = value;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
