// tests/test_chat.c - chat template rendering (section 5) against goldens.
//
// The expected strings below were rendered by jinja2 (ImmutableSandboxedEnvironment with
// trim_blocks and lstrip_blocks, as transformers renders chat templates; bos_token="",
// since sgllm leaves the BOS to the tokenizer) from the real templates: Gemma 3's from
// Google's tokenizer_config.json (reproduced below; the Gemma 3 270M GGUF ships none) and
// SmolLM2-135M-Instruct's tokenizer.chat_template, read from its GGUF with the python gguf
// package (both reproduced below). The "single newline" case renders Gemma 3's template with its
// system separator changed to '\n', as some Gemma GGUFs ship it. jinja2 raises on the Gemma
// role orders tested as invalid below ("Conversation roles must alternate").
#include "../sgllm_impl.c"
#include "test.h"

typedef struct chat_case {
    size_t n;
    sgllm_chat_message msgs[4];
    int add_assistant;
    const char *expect;
} chat_case;

static const char gemma3_template[] =
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n"
    "' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n"
    "' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n"
    "'}}\n"
    "{%- endif -%}\n";

static const char smollm2_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n"
    "' + message['content'] + '<|im_end|>' + '\n"
    "'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}";

static const chat_case gemma_cases[] = {
    {1, {{"user", "Hello"}}, 1,
     "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"},
    {1, {{"user", "Hello"}}, 0,
     "<start_of_turn>user\nHello<end_of_turn>\n"},
    {2, {{"system", "Be brief."}, {"user", "Hi there"}}, 1,
     "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n"},
    {4, {{"system", " Keep spaces \n"}, {"user", "Q1"}, {"assistant", "A1"}, {"user", "Q2"}}, 1,
     "<start_of_turn>user\n Keep spaces \n\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n"},
    {2, {{"user", "  \n\011padded\343\200\200\302\240 "}, {"assistant", "\342\200\203caf\303\251 \342\200\250"}}, 0,
     "<start_of_turn>user\npadded<end_of_turn>\n<start_of_turn>model\ncaf\303\251<end_of_turn>\n"},
    {1, {{"user", ""}}, 1,
     "<start_of_turn>user\n<end_of_turn>\n<start_of_turn>model\n"},
    {1, {{"system", "only a system message"}}, 1,
     "<start_of_turn>model\n"},
    {2, {{"user", "Hi\034"}, {"assistant", "\302\205ok\013"}}, 1,
     "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nok<end_of_turn>\n<start_of_turn>model\n"},
};
static const chat_case chatml_cases[] = {
    {1, {{"user", "Hello"}}, 1,
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"},
    {1, {{"user", "Hello"}}, 0,
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"},
    {2, {{"system", "Be brief."}, {"user", "Hi there"}}, 1,
     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"},
    {3, {{"user", " Q1 "}, {"assistant", "A1\n"}, {"user", "Q2"}}, 1,
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n Q1 <|im_end|>\n<|im_start|>assistant\nA1\n<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"},
    {3, {{"assistant", "I speak first"}, {"system", "late system"}, {"user", "ok"}}, 1,
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>assistant\nI speak first<|im_end|>\n<|im_start|>system\nlate system<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n"},
    {2, {{"system", "s1"}, {"system", "s2"}}, 0,
     "<|im_start|>system\ns1<|im_end|>\n<|im_start|>system\ns2<|im_end|>\n"},
    {1, {{"user", "caf\303\251 \343\200\200"}}, 1,
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\ncaf\303\251 \343\200\200<|im_end|>\n<|im_start|>assistant\n"},
};
static const chat_case gemma_single_newline_cases[] = {
    {2, {{"system", "Sys"}, {"user", "U"}}, 1,
     "<start_of_turn>user\nSys\nU<end_of_turn>\n<start_of_turn>model\n"},
};

// Renders every case and also checks the too-small path: the length is still reported and
// exactly the bytes that fit are written.
static void run_cases(const char *label, const char *tmpl, const char *arch, const chat_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const chat_case *c = &cases[i];
        char buf[1024];
        size_t len = 0, want = strlen(c->expect);
        sgllm_status st = sgllm__chat_render(tmpl, arch, c->msgs, c->n, c->add_assistant, buf, sizeof buf, &len);
        CHECKF(st == SGLLM_OK && len == want && !strcmp(buf, c->expect), "%s case %zu: status %d, got \"%s\"", label,
               i, (int)st, st == SGLLM_OK ? buf : "");
        char small[1024];
        memset(small, '#', sizeof small);
        size_t cap = want / 2, len2 = 0;
        st = sgllm__chat_render(tmpl, arch, c->msgs, c->n, c->add_assistant, small, cap, &len2);
        CHECKF(st == SGLLM_ERR_BUFFER_TOO_SMALL && len2 == want && !memcmp(small, c->expect, cap) && small[cap] == '#',
               "%s case %zu: cap %zu gave status %d len %zu", label, i, cap, (int)st, len2);
        st = sgllm__chat_render(tmpl, arch, c->msgs, c->n, c->add_assistant, small, want, &len2);
        CHECKF(st == SGLLM_ERR_BUFFER_TOO_SMALL && len2 == want, "%s case %zu: no room for the NUL", label, i);
        st = sgllm__chat_render(tmpl, arch, c->msgs, c->n, c->add_assistant, NULL, 0, &len2);
        CHECKF(st == SGLLM_ERR_BUFFER_TOO_SMALL && len2 == want, "%s case %zu: size query", label, i);
    }
}

int main(void) {
    run_cases("gemma", gemma3_template, "gemma3", gemma_cases, sizeof gemma_cases / sizeof *gemma_cases);
    run_cases("gemma (no template)", NULL, "gemma3", gemma_cases, sizeof gemma_cases / sizeof *gemma_cases);
    // Gemma's template wins over the architecture name.
    run_cases("gemma (arch llama)", gemma3_template, "llama", gemma_cases, sizeof gemma_cases / sizeof *gemma_cases);
    {
        char single[sizeof gemma3_template];
        const char *at = strstr(gemma3_template, "['content'] + '\n\n'");
        CHECK(at != NULL);
        if (at) { // the same edit the golden script made
            size_t head = (size_t)(at - gemma3_template) + strlen("['content'] + '\n");
            memcpy(single, gemma3_template, head);
            strcpy(single + head, gemma3_template + head + 1);
            run_cases("gemma single newline", single, "gemma3", gemma_single_newline_cases,
                      sizeof gemma_single_newline_cases / sizeof *gemma_single_newline_cases);
        }
    }

    run_cases("chatml (SmolLM2)", smollm2_template, "llama", chatml_cases, sizeof chatml_cases / sizeof *chatml_cases);

    // A ChatML template without a default system prompt renders no system turn.
    static const char plain_chatml[] = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                                       "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    const sgllm_chat_message hello[] = {{"user", "Hello"}};
    char buf[512];
    size_t len = 0;
    sgllm_status st = sgllm__chat_render(plain_chatml, "qwen2", hello, 1, 1, buf, sizeof buf, &len);
    CHECKF(st == SGLLM_OK && !strcmp(buf, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"), "got %s", buf);

    // Unknown or missing templates are a status, never a guess.
    static const char llama3[] = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                                 "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}";
    len = 77;
    CHECK(sgllm__chat_render(llama3, "llama", hello, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_NO_TEMPLATE && len == 0);
    CHECK(sgllm__chat_render(NULL, "llama", hello, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_NO_TEMPLATE);
    CHECK(sgllm__chat_render(NULL, NULL, hello, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_NO_TEMPLATE);
    CHECK(sgllm__chat_render("", "gemma3", hello, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_NO_TEMPLATE);

    // Bad arguments.
    const sgllm_chat_message bad_role[] = {{"user", "a"}, {"tool", "b"}};
    const sgllm_chat_message null_content[] = {{"user", NULL}};
    const sgllm_chat_message null_role[] = {{NULL, "x"}};
    const sgllm_chat_message user_user[] = {{"user", "a"}, {"user", "b"}};
    const sgllm_chat_message assistant_first[] = {{"assistant", "a"}};
    const sgllm_chat_message two_systems[] = {{"system", "a"}, {"system", "b"}, {"user", "c"}};
    for (int gemma = 0; gemma < 2; gemma++) {
        const char *t = gemma ? gemma3_template : smollm2_template;
        CHECK(sgllm__chat_render(t, "x", bad_role, 2, 1, buf, sizeof buf, &len) == SGLLM_ERR_INVALID_ARGUMENT);
        CHECK(sgllm__chat_render(t, "x", null_content, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_INVALID_ARGUMENT);
        CHECK(sgllm__chat_render(t, "x", null_role, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_INVALID_ARGUMENT);
        CHECK(sgllm__chat_render(t, "x", NULL, 1, 1, buf, sizeof buf, &len) == SGLLM_ERR_INVALID_ARGUMENT);
        CHECK(sgllm__chat_render(t, "x", hello, 1, 1, NULL, 10, &len) == SGLLM_ERR_INVALID_ARGUMENT);
        CHECK(sgllm__chat_render(t, "x", hello, 1, 1, buf, sizeof buf, NULL) == SGLLM_ERR_INVALID_ARGUMENT);
        // No messages: only the generation prompt.
        CHECK(sgllm__chat_render(t, "x", NULL, 0, 1, buf, sizeof buf, &len) == SGLLM_OK &&
              !strcmp(buf, gemma ? "<start_of_turn>model\n" : "<|im_start|>assistant\n"));
    }
    CHECK(sgllm__chat_render(gemma3_template, "gemma3", user_user, 2, 1, buf, sizeof buf, &len) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__chat_render(gemma3_template, "gemma3", assistant_first, 1, 1, buf, sizeof buf, &len) ==
          SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm__chat_render(gemma3_template, "gemma3", two_systems, 3, 1, buf, sizeof buf, &len) ==
          SGLLM_ERR_INVALID_ARGUMENT);

    // Trim against Python's str.strip on invalid UTF-8 and lone continuation bytes: they are
    // not whitespace and survive.
    const sgllm_chat_message raw[] = {{"user", " \x80 x \xff "}};
    CHECK(sgllm__chat_render(NULL, "gemma3", raw, 1, 0, buf, sizeof buf, &len) == SGLLM_OK &&
          !strcmp(buf, "<start_of_turn>user\n\x80 x \xff<end_of_turn>\n"));
    return test_finish("test_chat");
}
