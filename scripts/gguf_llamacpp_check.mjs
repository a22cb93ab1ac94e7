// Decode a rendered prompt greedily in llama.cpp (node-llama-cpp's prebuilt CPU build) and
// print the prompt's token ids and the answer's as one JSON line. Called by
// gguf_llamacpp_check.py: node gguf_llamacpp_check.mjs MODEL.gguf PROMPT.txt MAX_TOKENS
import fs from "fs";
import {getLlama} from "node-llama-cpp";

const [modelPath, promptPath, maxTokens] = process.argv.slice(2);
const text = fs.readFileSync(promptPath, "utf8");
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: 1024});
const sequence = context.getSequence();
const prompt = model.tokenize(text, true);  // true: special tokens in the text are tokens
const answer = [];
for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
  answer.push(token);
  if (answer.length >= Number(maxTokens) || model.isEogToken(token)) break;
}
const last = answer[answer.length - 1];
console.log(JSON.stringify({
  prompt: Array.from(prompt),
  answer,
  stopped: answer.length > 0 && model.isEogToken(last),
}));
