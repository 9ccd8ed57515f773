// Renders /openapi.json as a plain list of operations, grouped by tag; no external assets.
"use strict";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function bodyFields(operation) {
  const content = operation.requestBody && operation.requestBody.content;
  const schema = content && content["application/json"] && content["application/json"].schema;
  if (!schema || !schema.properties) return null;
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties)
    .map(([name, field]) => `${name}${required.has(name) ? "" : "?"}: ${field.description || ""}`)
    .join("\n");
}

function render(document_) {
  const groups = new Map();
  for (const [path, operations] of Object.entries(document_.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const tag = (operation.tags || ["other"])[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push({ path, method, operation });
    }
  }
  const root = document.getElementById("reference");
  root.textContent = "";
  for (const [tag, entries] of groups) {
    root.appendChild(element("h2", "", tag));
    for (const { path, method, operation } of entries) {
      const block = element("div", "op");
      block.id = operation.operationId;
      const label = tag === "websocket" ? "WS" : method.toUpperCase();
      block.appendChild(element("span", "method", label));
      block.appendChild(element("span", "path", path));
      block.appendChild(element("div", "desc", operation.summary));
      if (operation.description) block.appendChild(element("div", "desc", operation.description));
      const fields = bodyFields(operation);
      if (fields) block.appendChild(element("div", "fields", "body (form or JSON):\n" + fields));
      root.appendChild(block);
    }
  }
}

fetch("/openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => {
    document.getElementById("reference").textContent = `cannot load /openapi.json: ${error}`;
  });
